#!/usr/bin/env bash
# Put into .whl/ (git-ignored) one wheel of every distribution in tools/gpu-wheels.txt: what the
# GPU call imports that the GPU machine's image lacks (tools/gpu-image-packages.txt). Run it on a
# machine with PyPI; a device call then names .whl in its carry and tools/gpu-check.sh installs
# the wheels offline. The image's Python is 3.12 on x86-64 Linux: wheels are resolved for it.
#   - deepspeed is built here as a pure-Python wheel (DS_BUILD_OPS=0, ~2 MB): its fused ops
#     JIT-compile on the GPU machine with its nvcc and ninja;
#   - the others are downloaded as binary wheels, at this environment's versions where it has
#     them (what CI tests), with the dependencies pip resolves for them kept only where listed.
# The folder is replaced only once complete; its size is printed and checked, with the tracked
# tree, against the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
names=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' tools/gpu-wheels.txt | grep -v '^$')
pinned() {  # NAME==VERSION where this environment has NAME, else NAME
  "$PY" - "$@" <<'PYEOF'
import importlib.metadata as md, sys
for n in sys.argv[1:]:
    try:
        print(f"{n}=={md.version(n)}")
    except md.PackageNotFoundError:
        print(n)
PYEOF
}
work=$(mktemp -d /tmp/ltscale-wheels.XXXXXX)
trap 'rm -rf "$work"' EXIT
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
echo "gpu-wheels: building deepspeed as a pure-Python wheel (DS_BUILD_OPS=0)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w "$work" $(pinned deepspeed)
others=$(echo "$names" | grep -vx deepspeed || true)
if [ -n "$others" ]; then
  echo "gpu-wheels: downloading $(echo $others) for CPython 3.12 on x86-64 Linux"
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 "${PLAT[@]}" -d "$work/resolved" $(pinned $others)
  for whl in "$work"/resolved/*.whl; do  # keep the listed ones; the image has the rest
    dist=$(basename "$whl" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    if echo "$names" | grep -qx "$dist"; then mv "$whl" "$work/"; fi
  done
  rm -rf "$work/resolved"
fi
for n in $names; do
  ls "$work" | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | grep -qx "$n" \
    || { echo "gpu-wheels: no wheel for $n (tools/gpu-wheels.txt)" >&2; exit 1; }
done
wheels_kb=$(du -sk "$work" | cut -f1)
tree_kb=$(bash tools/carried-kb.sh)
echo "gpu-wheels: $(ls "$work" | wc -l) wheels, $((wheels_kb / 1024)) MiB; with the tree" \
     "($((tree_kb / 1024)) MiB) a device call carries $(((wheels_kb + tree_kb) / 1024)) MiB of 64"
if [ $((wheels_kb + tree_kb)) -ge $((64 * 1024)) ]; then
  echo "gpu-wheels: over the 64 MiB a device call carries" >&2; exit 1
fi
rm -rf .whl.new .whl.old && cp -r "$work" .whl.new && { [ ! -d .whl ] || mv .whl .whl.old; } && mv .whl.new .whl && rm -rf .whl.old "$work"
trap - EXIT
ls -1 .whl
