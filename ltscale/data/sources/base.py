"""The contract every raw-format adapter follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass(frozen=True)
class RawSample:
    """One image as a source yields it: encoded bytes, never decoded pixels."""

    key: str
    data: bytes
    ext: str  # file extension of ``data`` ("png", "jpg"), used as the tar member suffix
    label: int
    split: str
    meta: dict = field(default_factory=dict)


class Source(Protocol):
    name: str
    classes: list[str]

    def splits(self) -> list[str]: ...

    def count(self, split: str) -> int: ...

    def samples(self, split: str) -> Iterator[RawSample]: ...
