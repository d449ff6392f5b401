"""The sample index of a shard set: where each sample's image bytes are, and its label(s).

Columns (one row per sample): ``key``; ``split`` (position in ``splits``); ``shard`` (position in
``shards``); ``offset`` and ``size`` of the image member's data inside the tar; ``ext`` (the image
member is ``<key>.<ext>``); ``label`` (the source's label, -1 where it has none); ``path`` (the
sample's original path or name in the raw source); and any further integer label columns a source
provides (``coarse_label`` for CIFAR-100, ``noisy_label`` for Clothing1M) in ``extra``; and
``image_sha256``, the first 16 bytes of the SHA-256 of the image member's bytes, an (n, 16) uint8
column that finds byte-identical images (``data.duplicates``). Indexes written before that column
existed load without it (``has_image_hashes`` is then False) and keep their hash.

Stored as one ``index.npz`` (numpy, no pickles) beside ``card.json``. Columns load lazily, so
building a manifest over a million samples reads only the label and split columns. The content
hash is computed once when the index is written and stored with it; it ties every manifest to the
exact index it was built from (``ltscale data verify`` recomputes it).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ltscale.core.atomic import atomic_path
from ltscale.core.errors import DataError

INDEX_FILE = "index.npz"
CARD_FILE = "card.json"
COLUMNS = ("key", "split", "shard", "offset", "size", "ext", "label", "path")
IMAGE_HASH = "image_sha256"  # optional: absent from indexes built before it existed
IMAGE_HASH_BYTES = 16
_DTYPES = {"split": np.int8, "shard": np.int32, "offset": np.int64, "size": np.int64,
           "label": np.int64, IMAGE_HASH: np.uint8}
_EXTRA_PREFIX = "extra__"
# what numpy raises on a damaged .npz (a flipped byte, a cut file) besides OSError/ValueError
NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError)


class ShardIndex:
    def __init__(self, *, shards: list[str], splits: list[str], classes: list[str],
                 columns: dict[str, np.ndarray] | None = None,
                 extra: dict[str, np.ndarray] | None = None,
                 extra_classes: dict[str, list[str] | None] | None = None,
                 root: Path | None = None, stored_hash: str | None = None, source=None,
                 image_hashes: bool | None = None):
        self.shards, self.splits, self.classes = list(shards), list(splits), list(classes)
        self._cols: dict[str, np.ndarray] = {}
        for name, values in (columns or {}).items():
            self._cols[name] = np.asarray(values, dtype=_DTYPES.get(name))
        self._extra = {k: np.asarray(v, dtype=np.int64) for k, v in (extra or {}).items()}
        self.extra_classes = dict(extra_classes or {k: None for k in self._extra})
        self.root = Path(root) if root is not None else None
        self._stored_hash = stored_hash
        self._source = source  # lazily loaded npz path
        # whether the index has the optional IMAGE_HASH column (a loaded index: its npz has it)
        self.has_image_hashes = IMAGE_HASH in self._cols if image_hashes is None else image_hashes
        self.hashed_shards: dict[str, tuple] = {}  # shards whose SHA-256 matched (check_shards)
        lengths = {k: len(v) for k, v in {**self._cols, **self._extra}.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"index columns have different lengths {lengths}")

    # --- columns -------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        if name not in self._cols:
            if self._source is None:
                raise DataError(f"the index has no column {name!r}")
            self._cols[name] = self._load_array(name)
        return self._cols[name]

    def _load_array(self, name: str) -> np.ndarray:
        try:
            with np.load(self._source, allow_pickle=False) as z:
                return z[name]
        except KeyError:
            raise DataError(f"{self._source}: index has no column {name!r}; rebuild the dataset "
                            "with this version of ltscale") from None
        except (OSError, ValueError, *NPZ_ERRORS) as exc:
            raise DataError(f"{self._source}: unreadable shard index ({exc}); rebuild or "
                            "`ltscale data verify` the dataset") from None

    key = property(lambda self: self.column("key"))
    split = property(lambda self: self.column("split"))
    shard = property(lambda self: self.column("shard"))
    offset = property(lambda self: self.column("offset"))
    size = property(lambda self: self.column("size"))
    ext = property(lambda self: self.column("ext"))
    label = property(lambda self: self.column("label"))
    path = property(lambda self: self.column("path"))

    def image_hashes(self) -> np.ndarray | None:
        """(n, 16) uint8: the first 16 bytes of each image's SHA-256; None for an index built
        before ltscale recorded them."""
        return self.column(IMAGE_HASH) if self.has_image_hashes else None

    def extra(self, name: str) -> np.ndarray:
        if name not in self.extra_classes:
            raise DataError(f"the index has no label column {name!r} (it has "
                            f"{sorted(self.extra_classes) or 'none'})")
        if name not in self._extra:
            self._extra[name] = self._load_array(_EXTRA_PREFIX + name)
        return self._extra[name]

    def __len__(self) -> int:
        return len(self.column("split"))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_ids(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"split {split!r} is not in this dataset (it has {self.splits})")
        return np.flatnonzero(self.split == self.splits.index(split))

    def member(self, row: int) -> str:
        return f"{self.key[row]}.{self.ext[row]}"

    # --- hashing and files ---------------------------------------------------------------------
    def compute_hash(self) -> str:
        h = hashlib.sha256()
        for col in COLUMNS:
            arr = np.ascontiguousarray(self.column(col))
            h.update(col.encode())
            h.update(arr.tobytes())
        if self.has_image_hashes:  # absent from older indexes: their hashes stay valid
            h.update(IMAGE_HASH.encode())
            h.update(np.ascontiguousarray(self.column(IMAGE_HASH)).tobytes())
        for name in sorted(self.extra_classes):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.extra(name)).tobytes())
        h.update(json.dumps([self.shards, self.splits, self.classes, self.extra_classes],
                            sort_keys=True).encode())
        return h.hexdigest()[:16]

    def content_hash(self) -> str:
        """The hash stored when the index was written (computed now for an index in memory)."""
        if self._stored_hash is None:
            self._stored_hash = self.compute_hash()
        return self._stored_hash

    def save(self, directory: Path) -> None:
        meta = {"shards": self.shards, "splits": self.splits, "classes": self.classes,
                "extra_classes": self.extra_classes, "hash": self.compute_hash()}
        self._stored_hash = meta["hash"]
        arrays = {c: self.column(c) for c in self._columns()}
        arrays.update({_EXTRA_PREFIX + k: self.extra(k) for k in self.extra_classes})
        with atomic_path(Path(directory) / INDEX_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)

    @classmethod
    def load(cls, directory: str | Path) -> "ShardIndex":
        directory = Path(directory)
        path = directory / INDEX_FILE
        if not path.exists():
            raise DataError(f"no shard index at {path}; build the dataset first with "
                            "`ltscale data build KIND PATH --out DIR`")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                split = z["split"]
                hashes = IMAGE_HASH in z.files
        except (OSError, ValueError, KeyError, *NPZ_ERRORS) as exc:
            raise DataError(f"{path}: unreadable shard index ({exc}); rebuild the dataset with "
                            "`ltscale data build`") from None
        return cls(shards=meta["shards"], splits=meta["splits"], classes=meta["classes"],
                   columns={"split": split}, extra_classes=meta.get("extra_classes") or {},
                   root=directory, stored_hash=meta["hash"], source=path, image_hashes=hashes)

    def load_all(self) -> "ShardIndex":
        """Read every column now (e.g. before forking workers)."""
        for c in self._columns():
            self.column(c)
        for k in self.extra_classes:
            self.extra(k)
        return self

    def _columns(self) -> tuple[str, ...]:
        return COLUMNS + ((IMAGE_HASH,) if self.has_image_hashes else ())
