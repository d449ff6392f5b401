"""iNaturalist 2017 / 2018 / 2019 in their COCO-style JSON.

PATH holds ``train{YEAR}.json``, ``val{YEAR}.json`` and optionally ``test{YEAR}.json``; option
``images`` is the image root (default PATH) that the ``file_name`` fields are relative to. Each
file has ``images`` (id, file_name), ``annotations`` (image_id, category_id; none for test, whose
images are unlabeled) and ``categories`` (id, name). Category ids become labels 0..C−1 in
ascending id order (2018's ids already are 0..8141). When a file's categories carry no names,
``categories.json`` in PATH is used if present, else the id. Public sizes (2018): 437,513 train
images over 8,142 classes, val 24,426.
"""

from __future__ import annotations

import json
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import NO_LABEL, SampleRef
from ltscale.data.sources.files import ListedFiles, file_ref

PUBLIC_SIZES = {"inat2018": {"train": 437_513, "val": 24_426, "classes": 8_142}}


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} "
                        f"({exc.msg})") from None
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path}: not an iNaturalist/COCO file (no 'images' list)")
    return data


class INatSource(ListedFiles):
    def __init__(self, root: Path, year: int, images: str | None = None):
        if not root.is_dir():
            raise DataError(f"inat{year}: annotation folder not found: {root}")
        self.name = f"inat{year}"
        self.images = Path(images) if images else root
        self.extra_labels: dict = {}
        files = {s: root / f"{s}{year}.json" for s in ("train", "val", "test")}
        if not files["train"].exists():
            raise DataError(f"inat{year}: {files['train'].name} not found in {root}")
        data = {s: _load(p) for s, p in files.items() if p.exists()}
        names: dict[int, str | None] = {}
        for s in ("train", "val"):
            for cat in data.get(s, {}).get("categories", []):
                names.setdefault(int(cat["id"]), cat.get("name"))
        if not names:
            raise DataError(f"{files['train']}: no categories")
        if any(v is None for v in names.values()) and (root / "categories.json").exists():
            for cat in json.loads((root / "categories.json").read_text()):
                if int(cat["id"]) in names and cat.get("name"):
                    names[int(cat["id"])] = cat["name"]
        self.category_ids = sorted(names)
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.classes = [names[c] if names[c] is not None else str(c) for c in self.category_ids]
        self._refs = {s: self._split_refs(s, files[s], d, label_of) for s, d in data.items()}

    def _split_refs(self, split: str, path: Path, data: dict, label_of: dict) -> list[SampleRef]:
        ids = {}
        for i, img in enumerate(data["images"]):
            if img["id"] in ids:
                raise DataError(f"{path}: image id {img['id']} appears twice (images[{i}])")
            ids[img["id"]] = img
        labels: dict = {}
        for a, ann in enumerate(data.get("annotations") or []):
            where = f"{path}: annotations[{a}]"
            if ann["image_id"] not in ids:
                raise DataError(f"{where}: image_id {ann['image_id']} has no entry in 'images'")
            if ann["category_id"] not in label_of:
                raise DataError(f"{where}: category_id {ann['category_id']} is not among the "
                                "categories")
            label = label_of[ann["category_id"]]
            if labels.get(ann["image_id"], label) != label:
                raise DataError(f"{where}: image {ann['image_id']} has two different categories")
            labels[ann["image_id"]] = label
        refs = []
        for i, img in enumerate(data["images"]):
            label = labels.get(img["id"], NO_LABEL)
            if label == NO_LABEL and split != "test":
                raise DataError(f"{path}: images[{i}] (id {img['id']}) has no annotation")
            refs.append(file_ref(self.images, img["file_name"], split, label,
                                 f"{path}: images[{i}]"))
        return refs



for _year in (2017, 2018, 2019):
    register_source(f"inat{_year}")(lambda path, _y=_year, **options: INatSource(path, _y, **options))
