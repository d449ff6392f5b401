#!/usr/bin/env bash
# README command 2: install the test dependencies and run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not smoke" for the fast tier only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-data.sh
bash tools/venv.sh test
exec .venv/bin/python -m pytest "$@"
