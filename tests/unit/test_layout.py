"""The code's shape: no module of ltscale grows past 400 lines (one concept per file)."""

from pathlib import Path

import ltscale

LIMIT = 400


def test_no_module_is_longer_than_the_limit():
    root = Path(ltscale.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LIMIT}
    assert not long, f"modules over {LIMIT} lines (split them by concept): {long}"
