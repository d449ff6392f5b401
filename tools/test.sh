#!/usr/bin/env bash
# README command 2: install the test dependencies and run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not smoke" for the fast tier only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-data.sh
bash tools/venv.sh test
# a one-node SLURM cluster for tests/slurm and the requeue test (needs root + apt); where SLURM
# cannot be installed those tests skip and say why
bash tools/slurm-local.sh || echo "tools/test.sh: tools/slurm-local.sh failed (see above)" >&2
# the wheels the GPU call carries (DeepSpeed, pydantic, …): tests/smoke/test_gpu_rehearsal.py
# rehearses that call with them
bash tools/gpu-wheels.sh > /dev/null
# the linter first (pyproject [tool.ruff]: pyflakes, syntax errors, import order): seconds
.venv/bin/ruff check ltscale tests tools
exec .venv/bin/python -m pytest "$@"
