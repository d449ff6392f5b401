"""An ImageFolder tree: ``root/CLASS/*.jpg`` (one split, "train") or
``root/{train,val,test}/CLASS/*.jpg`` (one split per folder). Class names are the sorted folder
names of the first split; every other split may use only those. Files are stored as they are
(jpg, png, bmp, webp), never re-encoded; other files are ignored, hidden files too. Links that
lead outside the root are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef, ext_of, key_from_path
from ltscale.data.sources.files import read_file
from ltscale.errors import DataError

IMAGE_EXTS = {"jpg", "png", "bmp", "webp"}
SPLIT_DIRS = ("train", "val", "test")


class ImageFolderSource:
    def __init__(self, root: Path):
        if not root.is_dir():
            raise DataError(f"imagefolder: {root} is not a directory")
        self.root, self.name = root.resolve(), root.name
        self.extra_labels: dict = {}
        split_dirs = [s for s in SPLIT_DIRS if (root / s).is_dir()]
        self._dirs = {s: root / s for s in split_dirs} or {"train": root}
        first = next(iter(self._dirs.values()))
        self.classes = self._class_dirs(first)
        if not self.classes:
            raise DataError(f"imagefolder: no class folders in {first}")
        self._refs = {split: self._scan(split, d) for split, d in self._dirs.items()}

    @staticmethod
    def _class_dirs(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _scan(self, split: str, folder: Path) -> list[SampleRef]:
        refs, keys = [], {}
        for name in self._class_dirs(folder):
            if name not in self.classes:
                raise DataError(f"imagefolder: class folder {folder / name} is not a class of "
                                f"the first split ({len(self.classes)} classes)")
            label = self.classes.index(name)
            files = sorted(p for p in (folder / name).rglob("*")
                           if not any(part.startswith(".") for part in p.relative_to(folder).parts)
                           and ext_of(p.name) in IMAGE_EXTS)
            if not files:
                raise DataError(f"imagefolder: class folder {folder / name} holds no images "
                                f"({', '.join(sorted(IMAGE_EXTS))})")
            for path in files:
                real = path.resolve()
                if self.root not in real.parents:
                    raise DataError(f"imagefolder: {path} links outside {self.root}; refusing it")
                if not real.is_file():
                    continue
                rel = str(path.relative_to(self.root))
                key = key_from_path(rel)
                if key in keys:
                    raise DataError(f"imagefolder: {keys[key]} and {rel} map to the same sample "
                                    f"key {key!r}; rename one of them")
                keys[key] = rel
                refs.append(SampleRef(key=key, split=split, label=label, ext=ext_of(path.name),
                                      path=rel, size=os.stat(real).st_size, locator=str(real)))
        return refs

    def splits(self) -> list[str]:
        return list(self._dirs)

    def refs(self, split: str) -> list[SampleRef]:
        return self._refs[split]

    def read(self, ref: SampleRef) -> bytes:
        return read_file(ref)


@register_source("imagefolder")
def _open_imagefolder(path: Path, **options) -> ImageFolderSource:
    return ImageFolderSource(path, **options)
