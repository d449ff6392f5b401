#!/usr/bin/env bash
# The first command a session with a GPU runs (one H100/H200, no internet, under 8 minutes):
#   0. install the carried wheels (.whl/, from tools/gpu-wheels.sh) offline: DeepSpeed (its ops
#      JIT-compile with the machine's nvcc and ninja), pydantic and what they need;
#   1. `ltscale bench train` first, so that the figures come in the first minutes: ResNet-50
#      SimSiam bf16 images/s and data-wait share on synthetic 224-px JPEG shards, per loader:
#      torch + CPU decode, torch + GPU decode (nvJPEG), DALI mixed where installed;
#   2. the gpu test tier (pytest -m gpu tests/gpu): the matrix checks on CUDA for every backend
#      (DeepSpeed included) and precision, SIGKILL + relaunch exactness on CUDA, compile, GPU
#      JPEG decoding against the CPU path, DALI mixed vs CPU where DALI is installed, per-epoch
#      peak memory.
# Worst case 60 + 150 + 250 s of phase limits: under 8 minutes with the start-up. Everything
# lands in one folder of at most 8 files ($GPU_CHECK_OUT, default $OUT when the device
# tool sets it, else runs/gpu-check): summary.txt (per-phase seconds and figures), install.log,
# gpu-tests.log, gpu-tests.xml, bench-train.json, bench-train.log.
#
# `--rehearse` does on a CPU machine everything the call does except CUDA (CI runs it through
# tests/smoke/test_gpu_rehearsal.py): the wheels install offline into a fresh target for CPython
# 3.12 on x86-64; in an environment holding only the image's packages and the carried wheels, the
# gpu tier is collected, its launches run at CPU size and `bench train` at a toy size, and every
# distribution they import must be on the image or carried (tools/gpu_imports.py); then it
# prints the device call to make and what it carries.
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUTDIR=${GPU_CHECK_OUT:-${OUT:-runs/gpu-check}}
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
say() { echo "gpu-check: $*" | tee -a "$SUMMARY"; }
T0=$(date +%s)
phase() {  # phase NAME SECONDS CMD...: run under a timeout, record its seconds and exit status
  # (at the limit: SIGINT, so that pytest still writes its summary and junit file; SIGKILL 15 s on)
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@"
  rc=$?
  say "phase $name: exit $rc in $(( $(date +%s) - start )) s (limit $limit s)"
  return $rc
}
DEVICE_CMD="bash tools/gpu-check.sh"
CARRY='[".whl"]'

if [ ! -d .whl ] || ! ls .whl/*.whl >/dev/null 2>&1; then
  say "no wheels in .whl/: run 'bash tools/gpu-wheels.sh' on a machine with PyPI first" \
      "(DeepSpeed and pydantic are not on the GPU machine's image)"
  exit 3
fi

if [ $REHEARSE -eq 1 ]; then
  say "rehearsal on $(uname -n) (no CUDA): everything the GPU call does but CUDA"
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
  phase wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$target" .whl/*.whl > "$OUTDIR/install.log" 2>&1 \
    || { say "the carried wheels do not install offline for CPython 3.12 (see install.log)"; exit 3; }
  phase imports 900 "$PY" tools/gpu_imports.py --wheels .whl 2>&1 | tee "$OUTDIR/imports.log" | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || { say "the rehearsal failed: see $OUTDIR/imports.log"; exit 1; }
  carried_kb=$(bash tools/carried-kb.sh .whl)
  say "rehearsal passed in $(( $(date +%s) - T0 )) s; the device call carries $((carried_kb / 1024)) MiB of 64"
  say "device call: run(command=\"$DEVICE_CMD\", carry=$CARRY, timeout_s=540)"
  exit 0
fi

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "needs a CUDA GPU: torch.cuda.is_available() is False with $PY on this machine" \
      "(nothing was run; on CPU: bash tools/gpu-check.sh --rehearse)"
  exit 2
fi

SITE=/tmp/ltscale-site
phase install 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$SITE" .whl/*.whl > "$OUTDIR/install.log" 2>&1 \
  || { say "wheel install failed (install.log)"; exit 3; }
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF' | tee -a "$SUMMARY"
import importlib.util, torch
print(f"gpu-check: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch "
      f"{torch.__version__}, CUDA {torch.version.cuda}")
for name in ("deepspeed", "pydantic", "nvidia.dali"):
    found = importlib.util.find_spec(name.split(".")[0]) and importlib.util.find_spec(name)
    print(f"gpu-check: {name}: {'installed' if found else 'NOT installed (its tests skip)'}")
PYEOF

phase bench-train 150 "$PY" -m ltscale bench train --images 2048 --size 224 --backbone resnet50 \
  --batch 128 --steps 12 --epochs 2 --precision bf16 --loaders torch,torch-gpu,dali --json \
  > "$OUTDIR/bench-train.json" 2> "$OUTDIR/bench-train.log"
bench_rc=$?
"$PY" - "$OUTDIR/bench-train.json" <<'PYEOF' | tee -a "$SUMMARY"
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(print(f"gpu-check: no bench figures ({exc})"))
for name, v in r["loaders"].items():
    if "images_per_s" in v:
        print(f"gpu-check: bench train {name}: {v['images_per_s']:.0f} images/s, data wait "
              f"{100 * v['data_wait_fraction']:.1f} %, peak {v['peak_memory_mb']:.0f} MB")
    else:
        print(f"gpu-check: bench train {name}: skipped ({v.get('skipped')})")
PYEOF
phase gpu-tier 250 "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider \
  --junitxml "$OUTDIR/gpu-tests.xml" > "$OUTDIR/gpu-tests.log" 2>&1
tests_rc=$?
tail -25 "$OUTDIR/gpu-tests.log"
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$OUTDIR/gpu-tests.log" | tail -15 >> "$SUMMARY"

say "total $(( $(date +%s) - T0 )) s"
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ]
