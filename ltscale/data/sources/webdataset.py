"""Existing WebDataset shards written by others, indexed where they lie (no copy).

PATH is a folder of ``*.tar`` shards or one ``.tar`` file. Members are grouped into samples the
WebDataset way: the key is the member path up to the first dot of its file name, the rest is the
extension. Each sample needs exactly one image member (jpg, jpeg, png, webp, bmp, ppm, pgm);
its label is the integer in the ``cls`` member (option ``label_ext``) or none. The split of a
shard comes from option ``split``, else from its file name (train / val / test), else "train".
Class names come from option ``classes`` (a text file, one name per line) or are the label numbers.

Every member name is checked: absolute paths, ``..`` components, links and special files are
refused, naming the shard and member.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import NO_LABEL, SampleRef, check_key, ext_of
from ltscale.data.tarfmt import check_regular

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm"}
_SPLIT_WORDS = (("train", "train"), ("validation", "val"), ("val", "val"), ("test", "test"))


def _split_of(name: str) -> str:
    low = name.lower()
    for word, split in _SPLIT_WORDS:
        if re.search(rf"(^|[^a-z]){word}([^a-z]|$)", low):
            return split
    return "train"


class WebDatasetSource:
    def __init__(self, root: Path, split: str | None = None, label_ext: str = "cls",
                 classes: str | None = None):
        root = root.resolve()
        if root.is_file():
            tars = [root]
        elif root.is_dir():
            tars = sorted(root.glob("*.tar"))
        else:
            raise DataError(f"WebDataset shards not found: {root}")
        if not tars:
            raise DataError(f"{root}: no .tar shards to index")
        self.name = root.stem if root.is_file() else root.name
        self.in_place = tars
        self.extra_labels: dict = {}
        self.label_ext = label_ext
        self._refs: dict[str, list[SampleRef]] = {}
        top = NO_LABEL
        for shard_no, tar_path in enumerate(tars):
            split_name = split or _split_of(tar_path.stem)
            for ref in self._scan(shard_no, tar_path, split_name):
                self._refs.setdefault(split_name, []).append(ref)
                top = max(top, ref.label)
        if classes:
            names = [ln.strip() for ln in Path(classes).read_text().splitlines() if ln.strip()]
            if top >= len(names):
                raise DataError(f"{classes}: names {len(names)} classes but the shards use "
                                f"label {top}")
            self.classes = names
        else:
            self.classes = [str(i) for i in range(top + 1)]
        self._fds: dict[int, int] = {}

    def _scan(self, shard_no: int, tar_path: Path, split: str) -> list[SampleRef]:
        groups: dict[str, dict] = {}
        order: list[str] = []
        try:
            with tarfile.open(tar_path, "r:") as tar:
                for info in tar:
                    where = f"shard {tar_path}"
                    check_regular(info, where)
                    directory, _, base = info.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    key = f"{directory}/{stem}" if directory else stem
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    if ext.lower() in IMAGE_EXTS:
                        if "image" in groups[key]:
                            raise DataError(f"{where}: sample {key!r} has two images "
                                            f"({groups[key]['image'][0]} and {ext})")
                        groups[key]["image"] = (ext, info.offset_data, info.size)
                    elif ext == self.label_ext:
                        groups[key]["label"] = tar.extractfile(info).read()
        except tarfile.ReadError as exc:
            raise DataError(f"shard {tar_path}: not a readable tar file ({exc})") from None
        refs = []
        for key in order:
            g = groups[key]
            if "image" not in g:
                continue
            check_key(key, f"shard {tar_path}")
            label = NO_LABEL
            if "label" in g:
                try:
                    label = int(g["label"].decode().strip())
                except (UnicodeDecodeError, ValueError):
                    raise DataError(f"shard {tar_path}: sample {key!r} has label "
                                    f"{g['label'][:20]!r}, not an integer") from None
                if label < 0:
                    raise DataError(f"shard {tar_path}: sample {key!r} has negative label {label}")
            ext, offset, size = g["image"]
            refs.append(SampleRef(key=key, split=split, label=label, ext=ext_of("x." + ext),
                                  path=f"{tar_path.name}:{key}.{ext}", size=size,
                                  locator=(shard_no, offset, size)))
            # the index must name the member exactly as it is in the tar
            if ext != refs[-1].ext:
                refs[-1] = SampleRef(**{**refs[-1].__dict__, "ext": ext})
        return refs

    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(self._refs, key=lambda s: (order.get(s, 3), s))

    def refs(self, split: str) -> list[SampleRef]:
        return self._refs[split]

    def read(self, ref: SampleRef) -> bytes:
        shard_no, offset, size = ref.locator
        if shard_no not in self._fds:
            self._fds[shard_no] = os.open(self.in_place[shard_no], os.O_RDONLY)
        return os.pread(self._fds[shard_no], size, offset)


@register_source("webdataset")
def _open_webdataset(path: Path, **options) -> WebDatasetSource:
    return WebDatasetSource(path, **options)
