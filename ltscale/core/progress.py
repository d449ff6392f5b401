"""Progress bars: shown on rank 0 when stderr is a terminal, silent otherwise (CI logs, files)."""

from __future__ import annotations

from tqdm import tqdm


def bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    # disable=None lets tqdm hide the bar when the output is not a TTY
    return tqdm(iterable, disable=None if enabled else True, leave=False, **kwargs)
