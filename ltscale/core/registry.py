"""One registry shape for every pluggable component — methods, losses, data sources, backbones:
name → entry, filled by a decorator where the component is defined, asked through one query API
(``names()``, ``name in registry``, ``get(name)``, ``entries()``), as timm's model registry."""

from __future__ import annotations

import difflib
from typing import Callable


class Registry:
    """``what``: the component's name in messages ("loss", "source kind"); ``discover``: run once
    before the first query (imports the modules that register themselves); ``error``: the
    exception an unknown name raises — its message names the closest known name and lists all."""

    def __init__(self, what: str, *, discover: Callable[[], None] | None = None,
                 error: type[Exception] = KeyError, plural: str | None = None):
        self.what, self._discover, self.error = what, discover, error
        self.plural = plural or f"{what}s"
        self._entries: dict[str, object] = {}
        self._discovered = discover is None

    def register(self, name: str, entry=None):
        """``register(name, entry)``, or ``@register(name)`` on the entry's definition. The same
        name for two different entries is refused."""
        def add(obj):
            known = self._entries.get(name)
            if known is not None and known is not obj:
                raise ValueError(f"{self.what} {name!r} is registered twice ("
                                 f"{getattr(known, '__name__', known)!s}, "
                                 f"{getattr(obj, '__name__', obj)!s})")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def _ensure(self) -> None:
        if not self._discovered:
            self._discovered = True  # first: a module may ask the registry while it is imported
            try:
                self._discover()
            except BaseException:
                self._discovered = False
                raise

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._entries)

    def entries(self) -> dict[str, object]:
        """name → entry, in registration order."""
        self._ensure()
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def get(self, name: str):
        self._ensure()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(f"unknown {self.what} {name!r}; known {self.plural}: "
                             f"{', '.join(self.names())}{hint}")
        return self._entries[name]
