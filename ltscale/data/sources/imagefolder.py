"""An ImageFolder tree: ``root/CLASS/*.jpg`` (one split, "train") or
``root/{train,val,test}/CLASS/*.jpg`` (one split per folder present).

Class names are the sorted class-folder names of the train split (of all splits when there is no
train folder); label = position in that list, and every other split may use only those classes.
Images (jpg/jpeg, png, bmp, webp, any letter case) are found in class folders and their
subfolders, in sorted order, and stored as they are, never re-encoded. Other files are skipped
(counted in ``skipped``), hidden files and folders are ignored. Links that lead outside the root
are refused; links inside it are followed.

Options (strings, as the CLI passes them): ``splits="train,val"`` keeps only those split folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef, check_key, ext_of, key_from_path
from ltscale.errors import DataError

IMAGE_EXTS = {"jpg", "png", "bmp", "webp"}  # as ext_of gives them ("jpeg" -> "jpg")
SPLIT_DIRS = ("train", "val", "test")
_EXTS_TEXT = "jpg/jpeg, png, bmp, webp"


def _parse_splits(splits, available: list[str]) -> list[str]:
    if splits is None or splits == "":
        return list(available)
    wanted = [s.strip() for s in (splits.split(",") if isinstance(splits, str) else splits)]
    wanted = [s for s in wanted if s]
    unknown = [s for s in wanted if s not in available]
    if unknown or not wanted:
        raise DataError(f"imagefolder: option splits={splits!r} names "
                        f"{', '.join(unknown) or 'no split'}; this tree has "
                        f"{', '.join(available)} (comma-separated)")
    return [s for s in available if s in wanted]


class ImageFolderSource:
    def __init__(self, root: Path, splits: str | list[str] | None = None):
        if not root.exists():
            raise DataError(f"imagefolder: {root} not found")
        if not root.is_dir():
            raise DataError(f"imagefolder: {root} is not a directory (expected root/CLASS/*.jpg "
                            "or root/train/CLASS/*.jpg)")
        self.root = root.resolve()
        self.name = self.root.name
        self.extra_labels: dict[str, list[str] | None] = {}
        self.skipped: dict[str, int] = {}  # split -> files skipped for their extension
        dirs, images = self._listing(self.root)
        split_names = [s for s in SPLIT_DIRS if s in dirs]
        if split_names:
            others = [d for d in dirs if d not in SPLIT_DIRS]
            if others:
                raise DataError(f"imagefolder: {self.root} holds split folders "
                                f"({', '.join(split_names)}) and also other folders "
                                f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                                "use either root/CLASS/ or root/{train,val,test}/CLASS/, not both")
            self._loose(images)
            all_dirs = {s: self.root / s for s in split_names}
        else:
            all_dirs = {"train": self.root}
        self._dirs = {s: all_dirs[s] for s in _parse_splits(splits, list(all_dirs))}
        # class folders of every split (listing all splits, so the class list does not depend on
        # the splits option)
        class_dirs: dict[str, list[str]] = {}
        for split, folder in all_dirs.items():
            names, loose = self._listing(folder) if folder != self.root else (dirs, images)
            self._loose(loose)
            if not names:
                raise DataError(f"imagefolder: {folder} holds no class folders (expected "
                                f"{folder}/CLASS/*.jpg)")
            class_dirs[split] = names
        if "train" in class_dirs:
            self.classes = list(class_dirs["train"])
        else:
            self.classes = sorted({c for names in class_dirs.values() for c in names})
        for split, names in class_dirs.items():
            for name in names:
                if name not in self.classes:
                    raise DataError(
                        f"imagefolder: class folder {all_dirs[split] / name} is not a class of the "
                        f"first split (train/, {len(self.classes)} classes); every split may "
                        "only use the class folders of train/: add the class there or remove "
                        "this folder")
        index = {c: i for i, c in enumerate(self.classes)}
        keys: dict[str, str] = {}
        self._refs = {split: self._scan(split, folder, class_dirs[split], index, keys)
                      for split, folder in self._dirs.items()}

    # -- listing ---------------------------------------------------------------------------------
    def _rel(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _checked(self, entry: os.DirEntry) -> str:
        """'dir', 'image', 'other' or 'skip' for one entry; links are checked before use."""
        is_dir = entry.is_dir()
        is_image = not is_dir and ext_of(entry.name) in IMAGE_EXTS
        if entry.is_symlink() and (is_dir or is_image):
            real = Path(os.path.realpath(entry.path))
            if not real.is_relative_to(self.root):
                raise DataError(f"imagefolder: {entry.path} links outside {self.root} (to {real}); "
                                "refusing it. Copy the file or folder into the tree instead")
            if is_image and not real.is_file():
                raise DataError(f"imagefolder: {entry.path} is a broken link (to {real}); "
                                "remove it or restore its target")
        if is_dir:
            return "dir"
        if is_image:
            return "image" if entry.is_file() else "skip"
        return "other"

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"imagefolder: cannot list {folder} ({exc.strerror or exc})") from None

    def _listing(self, folder: Path) -> tuple[list[str], list[str]]:
        """(sorted sub-folder names, image paths lying directly in ``folder``)."""
        dirs, images = [], []
        for e in self._entries(folder):
            kind = self._checked(e)
            if kind == "dir":
                dirs.append(e.name)
            elif kind == "image":
                images.append(e.path)
        return dirs, images

    def _loose(self, images: list[str]) -> None:
        if images:
            more = f" (and {len(images) - 1} more)" if len(images) > 1 else ""
            raise DataError(f"imagefolder: image {images[0]}{more} lies outside any class folder; "
                            "move it into root/CLASS/ (or root/SPLIT/CLASS/) or remove it")

    def _images(self, folder: Path, split: str) -> list[tuple[str, int]]:
        """(path, byte size) of every image under ``folder``, depth first, sorted by name."""
        out: list[tuple[str, int]] = []
        seen: set[tuple[int, int]] = set()
        stack = [folder]
        while stack:
            current = stack.pop()
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
                continue
            seen.add((st.st_dev, st.st_ino))
            subdirs = []
            for e in self._entries(current):
                kind = self._checked(e)
                if kind == "dir":
                    subdirs.append(Path(e.path))
                elif kind == "image":
                    out.append((e.path, e.stat().st_size))
                else:
                    self.skipped[split] = self.skipped.get(split, 0) + 1
            stack.extend(reversed(subdirs))
        return sorted(out)

    def _scan(self, split: str, folder: Path, names: list[str], index: dict[str, int],
              keys: dict[str, str]) -> list[SampleRef]:
        refs = []
        for name in names:
            files = self._images(folder / name, split)
            if not files:
                raise DataError(f"imagefolder: class folder {folder / name} holds no images "
                                f"({_EXTS_TEXT}); add its images or remove the folder")
            for path, size in files:
                rel = self._rel(path)
                key = key_from_path(rel)
                check_key(key, f"imagefolder: {rel}")
                if key in keys:
                    raise DataError(f"imagefolder: {keys[key]} and {rel} map to the same sample "
                                    f"key {key!r}; rename one of them")
                keys[key] = rel
                refs.append(SampleRef(key=key, split=split, label=index[name],
                                      ext=ext_of(path), path=rel, size=size, locator=path))
        return refs

    # -- Source ----------------------------------------------------------------------------------
    def splits(self) -> list[str]:
        return list(self._dirs)

    def refs(self, split: str) -> list[SampleRef]:
        if split not in self._refs:
            raise DataError(f"imagefolder: no split {split!r}; splits: {', '.join(self._dirs)}")
        return self._refs[split]

    def read(self, ref: SampleRef) -> bytes:
        try:
            with open(ref.locator, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise DataError(f"imagefolder: cannot read {ref.path} ({exc.strerror or exc}); the "
                            "tree changed since it was listed") from None


@register_source("imagefolder")
def _open_imagefolder(path: Path, **options) -> ImageFolderSource:
    return ImageFolderSource(path, **options)
