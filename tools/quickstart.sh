#!/usr/bin/env bash
# README command 1: install ltscale and run the quickstart pipeline on the bundled data.
# Extra arguments go to `ltscale run` (e.g. pretrain.epochs=8 or --data PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-data.sh
bash tools/venv.sh
exec .venv/bin/ltscale run recipes/quickstart.yaml "$@"
