#!/usr/bin/env bash
# Print the KiB a device call carries: the working tree it copies (tracked files and untracked
# ones git does not ignore) plus the extra paths named as arguments (what `carry` adds, e.g. .whl).
# Without a git work tree (a CI checkout may have none) every file outside the ignored build
# folders is counted, which can only overstate the size.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard
  else
    find . \( -name .git -o -name .venv -o -name .whl -o -name .whl.new -o -name .whl.old \
              -o -name __pycache__ -o -name '*.egg-info' -o -name runs -o -name mlruns \
              -o -name build -o -name .pytest_cache \) -prune -o -type f -print0
  fi
  for extra in "$@"; do [ ! -e "$extra" ] || printf '%s\0' "$extra"; done
} | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1
