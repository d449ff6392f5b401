"""ImageNet-LT and Places-LT split files (Liu et al. 2019).

PATH holds ``ImageNet_LT_{train,val,test}.txt`` (or ``Places_LT_*.txt``), one image per line:
``relative/path.jpg LABEL``; option ``images`` is the image root (default PATH). Places-LT lines
may start with ``/`` relative to its data root: one leading slash is dropped for Places-LT.
Public sizes: ImageNet-LT 115,846 train images over 1,000 classes (1,280 → 5 per class), val
20,000, test 50,000; Places-LT 62,500 / 7,300 / 36,500 over 365 classes (4,980 → 5 per class).
Class names: the folder the images of a class share (ImageNet-LT: the WordNet id), else the
label number.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef
from ltscale.data.sources.files import ListedFiles, file_ref, list_lines, path_and_label

PUBLIC_SIZES = {
    "imagenet_lt": {"classes": 1000, "train": 115_846, "val": 20_000, "test": 50_000,
                    "max_per_class": 1280, "min_per_class": 5},
    "places_lt": {"classes": 365, "train": 62_500, "val": 7_300, "test": 36_500,
                  "max_per_class": 4980, "min_per_class": 5},
}
_PREFIX = {"imagenet_lt": "ImageNet_LT", "places_lt": "Places_LT"}


class LtSplitSource(ListedFiles):
    def __init__(self, root: Path, kind: str, images: str | None = None,
                 num_classes: str | int | None = None):
        if not root.is_dir():
            raise DataError(f"{kind}: split-file folder not found: {root}")
        self.name, self.kind = kind, kind
        self.images = Path(images) if images else root
        n_classes = int(num_classes) if num_classes else PUBLIC_SIZES[kind]["classes"]
        self.extra_labels: dict = {}
        self._refs: dict[str, list[SampleRef]] = {}
        seen: dict[str, str] = {}
        folders: dict[int, Counter] = {}
        for split in ("train", "val", "test"):
            path = root / f"{_PREFIX[kind]}_{split}.txt"
            if not path.exists():
                if split == "train":
                    raise DataError(f"{kind}: {path.name} not found in {root}")
                continue
            refs = []
            for n, line in list_lines(path):
                rel, label = path_and_label(line, path, n, n_classes)
                if kind == "places_lt" and rel.startswith("/"):
                    rel = rel[1:]
                where = f"{path}:{n}"
                if rel in seen:
                    raise DataError(f"{where}: {rel} is listed twice (first at {seen[rel]})")
                seen[rel] = where
                refs.append(file_ref(self.images, rel, split, label, where))
                if split == "train":
                    folders.setdefault(label, Counter())[self._class_folder(rel)] += 1
            self._refs[split] = refs
        self.classes = []
        for c in range(n_classes):
            names = folders.get(c)
            self.classes.append(names.most_common(1)[0][0] if names and len(names) == 1
                                else str(c))

    def _class_folder(self, rel: str) -> str:
        parts = rel.split("/")[:-1]
        if self.kind == "imagenet_lt":  # train/n01440764/x.JPEG
            return parts[1] if len(parts) >= 2 else (parts[0] if parts else "")
        # Places-LT: data_256/a/airfield/x.jpg or a/airfield/x.jpg -> the scene folder(s)
        parts = [p for p in parts if p not in ("data_256", "val_256", "test_256")]
        return "/".join(parts[1:]) if len(parts) > 1 else "/".join(parts)



@register_source("imagenet_lt")
def _open_imagenet_lt(path: Path, **options) -> LtSplitSource:
    return LtSplitSource(path, "imagenet_lt", **options)


@register_source("places_lt")
def _open_places_lt(path: Path, **options) -> LtSplitSource:
    return LtSplitSource(path, "places_lt", **options)
