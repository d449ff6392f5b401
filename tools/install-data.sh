#!/usr/bin/env bash
# Install the bundled default data (Debian's dataset-fashion-mnist) when it is missing.
set -euo pipefail
DATA=/usr/share/datasets/fashion-mnist
if [ -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "Fashion-MNIST is not installed and this user cannot install packages." >&2
    echo "Ask an administrator for: apt-get install dataset-fashion-mnist" >&2
    echo "or pass --data PATH to a folder of Fashion-MNIST/MNIST IDX files." >&2
    exit 1
  fi
fi
echo "installing dataset-fashion-mnist (Debian package) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
