#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that the GPU machine's image lacks for
# tools/gpu-check.sh (its Python is 3.12 on x86-64 and has torch, torchvision, numpy, pillow, yaml,
# tqdm, pytest, but not pydantic). They land in .whl/ (git-ignored); a device call then names
# .whl in its carry and gpu-check.sh installs them offline. DALI's wheel (~1 GB) and DeepSpeed
# (built against the local torch) exceed what a call can carry: their tests skip there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# pydantic with what it needs (pydantic-core pinned to its version), resolved for that machine
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d .whl pydantic
ls -la .whl
