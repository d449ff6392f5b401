#!/usr/bin/env bash
# The first command a session with a GPU runs (one H100/H200, no internet, under 8 minutes):
#   1. the gpu test tier (pytest -m gpu tests/gpu): the matrix checks on CUDA for every backend and
#      precision, SIGKILL + relaunch exactness on CUDA, compile, DALI mixed vs CPU, per-epoch
#      peak memory;
#   2. `ltscale bench train`: ResNet-50 SimSiam bf16 images/s on synthetic 224-px JPEG shards
#      through the DALI `mixed` and the torch loaders, data-wait share, peak memory.
# Results go to $GPU_CHECK_OUT (default: $OUT when the device tool sets it, else runs/gpu-check):
# gpu-tests.log, gpu-tests.xml, bench-train.json, summary.txt.
#
# Nothing is downloaded. Python packages the machine lacks (pydantic is the usual one) are
# installed from wheels in .whl/ when that folder exists (tools/gpu-wheels.sh fetches them on a
# machine with PyPI); DALI and DeepSpeed tests skip, saying so, where those are not installed.
# Without a CUDA GPU this script says so and exits 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUTDIR=${GPU_CHECK_OUT:-${OUT:-runs/gpu-check}}
mkdir -p "$OUTDIR"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: needs a CUDA GPU: torch.cuda.is_available() is False with $PY on this machine" \
       "(nothing was run; CI and CPU machines run the CPU matrix: pytest -m matrix)" >&2
  exit 2
fi

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  echo "gpu-check: installing the carried wheels from .whl/ into /tmp/ltscale-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ltscale-site .whl/*.whl || { echo "gpu-check: wheel install failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/ltscale-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

missing=$("$PY" - <<'EOF'
import importlib
need = ["numpy", "PIL", "yaml", "pydantic", "tqdm", "pytest", "torchvision"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu-check: missing Python packages: $missing (carry them as wheels: bash tools/gpu-wheels.sh" \
       "here, then name .whl in the device call's carry)" >&2
  exit 3
fi
"$PY" - <<'EOF' | tee "$OUTDIR/summary.txt"
import importlib, torch
print(f"gpu-check: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch "
      f"{torch.__version__}, CUDA {torch.version.cuda}")
for name in ("nvidia.dali", "deepspeed"):
    print(f"gpu-check: {name}: {'installed' if importlib.util.find_spec(name) else 'NOT installed (its tests skip)'}")
EOF

start=$(date +%s)
timeout 330 "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider \
  --junitxml "$OUTDIR/gpu-tests.xml" 2>&1 | tee "$OUTDIR/gpu-tests.log" | tail -40
tests_rc=${PIPESTATUS[0]}
echo "gpu-check: gpu tier exit $tests_rc in $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/summary.txt"

start=$(date +%s)
timeout 150 "$PY" -m ltscale bench train --images 2048 --size 224 --backbone resnet50 \
  --batch 128 --steps 12 --epochs 2 --precision bf16 --json > "$OUTDIR/bench-train.json"
bench_rc=$?
echo "gpu-check: bench train exit $bench_rc in $(( $(date +%s) - start )) s" | tee -a "$OUTDIR/summary.txt"
[ $bench_rc -eq 0 ] && cat "$OUTDIR/bench-train.json" | tee -a "$OUTDIR/summary.txt"
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ]
