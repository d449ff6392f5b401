"""Clothing1M (Xiao et al. 2015): 14 clothing classes, a million web images with noisy labels
and a smaller set with verified (clean) labels.

PATH is the dataset root (images under ``images/...``); the annotation files sit in PATH or in
``PATH/annotations``: ``noisy_label_kv.txt`` and ``clean_label_kv.txt`` (``path label`` lines),
``noisy_train_key_list.txt``, ``clean_train_key_list.txt``, ``clean_val_key_list.txt``,
``clean_test_key_list.txt`` (one path per line) and ``category_names_eng.txt``. Public sizes:
1,000,000 noisy-labelled training images, 72,409 clean-labelled images; clean train 47,570, val
14,313, test 10,526.

A sample may have a noisy label, a clean label or both; the index keeps both: ``label`` is the
clean label (-1 when unknown) and the ``noisy_label`` column the noisy one (-1 when unknown).
The public lists overlap, so every image is put in one split only, the first of clean_test,
clean_val, clean_train, noisy_train: no test or validation image can leak into training.
``overlaps`` counts the images each split gave up.
"""

from __future__ import annotations

from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import NO_LABEL, SampleRef
from ltscale.data.sources.files import ListedFiles, file_ref, list_lines, path_and_label

CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
           "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]
PUBLIC_SIZES = {"noisy_train": 1_000_000, "clean_labels": 72_409, "clean_train": 47_570,
                "clean_val": 14_313, "clean_test": 10_526}
SPLITS = ["noisy_train", "clean_train", "clean_val", "clean_test"]
_PRIORITY = ["clean_test", "clean_val", "clean_train", "noisy_train"]


class Clothing1MSource(ListedFiles):
    def __init__(self, root: Path):
        if not root.is_dir():
            raise DataError(f"clothing1m: dataset root not found: {root}")
        ann = root / "annotations" if (root / "annotations" / "noisy_label_kv.txt").exists() else root
        self.name, self.root = "clothing1m", root
        names = ann / "category_names_eng.txt"
        self.classes = [n for _, n in list_lines(names)] if names.exists() else list(CLASSES)
        if len(self.classes) != 14:
            raise DataError(f"{names}: {len(self.classes)} class names, Clothing1M has 14")
        self.extra_labels = {"noisy_label": None}
        noisy = self._labels(ann / "noisy_label_kv.txt")
        clean = self._labels(ann / "clean_label_kv.txt")
        self._refs: dict[str, list[SampleRef]] = {s: [] for s in SPLITS}
        self.overlaps = {s: 0 for s in SPLITS}
        placed: set[str] = set()
        for split in _PRIORITY:
            path = ann / f"{split}_key_list.txt"
            if not path.exists():
                raise DataError(f"clothing1m: {path.name} not found in {ann}")
            for n, rel in list_lines(path):
                where = f"{path}:{n}"
                if rel in placed:
                    self.overlaps[split] += 1
                    continue
                c, y = clean.get(rel, (NO_LABEL,))[0], noisy.get(rel, (NO_LABEL,))[0]
                if split.startswith("clean") and c == NO_LABEL:
                    raise DataError(f"{where}: {rel} is in a clean list but has no label in "
                                    "clean_label_kv.txt")
                if c == NO_LABEL and y == NO_LABEL:
                    raise DataError(f"{where}: {rel} has no label in noisy_label_kv.txt or "
                                    "clean_label_kv.txt")
                placed.add(rel)
                self._refs[split].append(file_ref(root, rel, split, c, where,
                                                  extra=(("noisy_label", y),)))

    def _labels(self, path: Path) -> dict[str, tuple[int, str]]:
        if not path.exists():
            raise DataError(f"clothing1m: {path.name} not found in {path.parent}")
        out: dict[str, tuple[int, str]] = {}
        for n, line in list_lines(path):
            rel, label = path_and_label(line, path, n, len(self.classes))
            if rel in out and out[rel][0] != label:
                raise DataError(f"{path}:{n}: {rel} has label {label}, but {out[rel][1]} "
                                f"gave it {out[rel][0]}")
            out[rel] = (label, f"line {n}")
        return out



@register_source("clothing1m")
def _open_clothing1m(path: Path, **options) -> Clothing1MSource:
    return Clothing1MSource(path, **options)
