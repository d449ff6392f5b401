"""An ImageFolder tree: ``root/CLASS/*.jpg`` (one split, "train") or
``root/{train,val,test}/CLASS/*.jpg`` (one split per folder present).

Class names are the sorted class-folder names of the train split (of all splits when there is no
train folder); label = position in that list, and every other split may use only those classes.
Images (jpg/jpeg, png, bmp, webp, any letter case) are found in class folders and their
subfolders, in sorted order, and stored as they are, never re-encoded. Other files are skipped
(counted in ``skipped``), hidden files and folders are ignored.

Links may not change what a file is: a link inside a class folder must lead to a file or folder
inside that same class folder (by real path), else it is refused naming the link and its target
(``links=skip``: left out, counted in ``skipped_links`` and logged). A class or split folder that is
a link must not lead into, onto or above another class folder, nor outside the root. One real file
reached twice in its class (a link to it, a hard link) is indexed once (``duplicates``); one file in
two classes or splits (hard links) is refused.

Options (strings, as the CLI passes them): ``splits="train,val"`` keeps only those split folders;
``links=refuse`` (default) or ``links=skip`` for links that leave their class folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef, check_key, ext_of, key_from_path, parse_splits

logger = logging.getLogger(__name__)

IMAGE_EXTS = {"jpg", "png", "bmp", "webp"}  # as ext_of gives them ("jpeg" -> "jpg")
SPLIT_DIRS = ("train", "val", "test")
_EXTS_TEXT = "jpg/jpeg, png, bmp, webp"
LINK_POLICIES = ("refuse", "skip")
_SKIP_HINT = ", or pass --option links=skip to leave such links out"


class ImageFolderSource:
    def __init__(self, root: Path, splits: str | list[str] | None = None, links: str = "refuse"):
        if links not in LINK_POLICIES:
            raise DataError(f"imagefolder: option links={links!r} is not known; use links=refuse "
                            "(the default: stop at a link that leaves its class folder) or "
                            "links=skip (leave such links out)")
        self.links = links
        if not root.exists():
            raise DataError(f"imagefolder: {root} not found")
        if not root.is_dir():
            raise DataError(f"imagefolder: {root} is not a directory (expected root/CLASS/*.jpg "
                            "or root/train/CLASS/*.jpg)")
        self.root = root.resolve()
        self.name = self.root.name
        self.extra_labels: dict[str, list[str] | None] = {}
        self.skipped: dict[str, int] = {}  # split -> files skipped for their extension
        self.skipped_links: list[tuple[str, str]] = []  # (link, its target) left out: links=skip
        self.duplicates: dict[str, int] = {}  # split -> files reached twice in a class, kept once
        self._owner: dict[object, tuple[str, str]] = {}  # real file -> (its path, split/class)
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
        self._dirs = {s: all_dirs[s] for s in parse_splits(splits, list(all_dirs), "imagefolder",
                                                                have="this tree has")}
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
        self._check_class_links(all_dirs, class_dirs)
        index = {c: i for i, c in enumerate(self.classes)}
        keys: dict[str, str] = {}
        self._refs = {split: self._scan(split, folder, class_dirs[split], index, keys)
                      for split, folder in self._dirs.items()}
        self._report_links()

    # -- listing ---------------------------------------------------------------------------------
    def _rel(self, path: str | Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _checked(self, entry: os.DirEntry, bound: Path | None = None) -> str:
        """'dir', 'image', 'other', 'skip' or 'left' (a link out of ``bound`` under links=skip)
        for one entry; links are checked before use. ``bound``: the real class folder a link
        inside a class must stay in (None: the root, for class and split folders)."""
        is_dir = entry.is_dir()
        is_image = not is_dir and ext_of(entry.name) in IMAGE_EXTS
        if entry.is_symlink() and (is_dir or is_image):
            real = Path(os.path.realpath(entry.path))
            if not real.is_relative_to(self.root):
                if bound is not None and self.links == "skip":
                    return "left"
                raise DataError(f"imagefolder: {entry.path} links outside {self.root} (to {real}); "
                                "refusing it. Copy the file or folder into the tree instead"
                                + (_SKIP_HINT if bound is not None else ""))
            if bound is not None and not real.is_relative_to(bound):
                if self.links == "skip":
                    return "left"
                raise DataError(f"imagefolder: {entry.path} links outside its class folder {bound} "
                                f"(to {real}); refusing it: a link may not add another class's or "
                                f"split's images. Copy the file instead{_SKIP_HINT}")
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
        """(path, byte size) of every image under ``folder``, depth first, sorted by name; each
        real file once, links leading out of the (real) class folder refused or left out."""
        bound = Path(os.path.realpath(folder))
        found: dict[object, tuple[str, int, bool]] = {}  # real file -> (path, size, via a link)
        seen: set[tuple[int, int]] = set()
        stack, later = [(folder, bound, False)], []  # folders reached by a link: walked last
        while stack or later:
            current, real_dir, via = stack.pop() if stack else later.pop(0)
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
                continue
            seen.add((st.st_dev, st.st_ino))
            subdirs = []
            for e in self._entries(current):
                kind = self._checked(e, bound)
                link = e.is_symlink()
                if kind == "left":
                    self.skipped_links.append((self._rel(e.path), os.path.realpath(e.path)))
                elif kind == "dir" and link:
                    later.append((Path(e.path), Path(os.path.realpath(e.path)), True))
                elif kind == "dir":
                    subdirs.append((Path(e.path), real_dir / e.name, via))
                elif kind == "image":
                    fst = e.stat()
                    real = os.path.realpath(e.path) if link else str(real_dir / e.name)
                    ident = (fst.st_dev, fst.st_ino) if fst.st_nlink > 1 and fst.st_ino else real
                    link = link or via
                    kept = found.get(ident)
                    if kept is None or (kept[2] and not link) or (
                            kept[2] == link and e.path < kept[0]):
                        found[ident] = (e.path, fst.st_size, link)
                    if kept is not None:
                        self.duplicates[split] = self.duplicates.get(split, 0) + 1
                else:
                    self.skipped[split] = self.skipped.get(split, 0) + 1
            stack.extend(reversed(subdirs))
        owner = f"{split}/{folder.name}"
        for ident, (path, _, _) in found.items():
            first = self._owner.setdefault(ident, (self._rel(path), owner))
            if first[1] != owner:
                raise DataError(f"imagefolder: {first[0]} and {self._rel(path)} are one file (hard "
                                "links) in two class folders or splits; one file may be one "
                                "sample only: remove one of them")
        return sorted((path, size) for path, size, _ in found.values())

    def _check_class_links(self, split_dirs: dict[str, Path],
                           class_dirs: dict[str, list[str]]) -> None:
        """A class or split folder reached through a link must not be, hold or lie inside another
        class folder (its images would count twice, under two labels or in two splits), nor hold
        its own split folder or the root."""
        tops = [self.root, *(Path(os.path.realpath(d)) for d in split_dirs.values())]
        folders = []
        for split, names in class_dirs.items():
            for name in names:
                path = split_dirs[split] / name
                real = Path(os.path.realpath(path))
                folders.append((str(real) + os.sep, path, real))
                above = [t for t in tops if t.is_relative_to(real)]
                if above:
                    raise DataError(f"imagefolder: class folder {path} links to {real}, which "
                                    f"holds {above[0]}; a class folder may hold its own images "
                                    "only: remove the link")
        folders.sort()
        for (a, pa, ra), (b, pb, rb) in zip(folders, folders[1:]):
            if b.startswith(a):  # sorted: some folder lies inside another iff a neighbour does
                link, target, other = (pa, ra, pb) if pa != ra else (pb, rb, pa)
                raise DataError(f"imagefolder: class folder {link} links to {target}, which "
                                f"{'is' if ra == rb else 'overlaps'} class folder {other}; a class "
                                "folder may not hold another class's or split's images: copy "
                                "the images or remove the link")

    def _report_links(self) -> None:
        if self.skipped_links:
            link, target = self.skipped_links[0]
            more = len(self.skipped_links) - 1
            logger.warning(f"imagefolder: left out {len(self.skipped_links)} link(s) that lead "
                           f"outside their class folder (links=skip): {link} -> {target}"
                           + (f" and {more} more" if more else ""))
        if self.duplicates:
            n = sum(self.duplicates.values())
            logger.info(f"imagefolder: {n} image(s) that are another image of their class folder "
                        "(a link or hard link to it) were indexed once")

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
