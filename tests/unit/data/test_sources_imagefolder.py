"""ImageFolder adapter on miniature trees: root/CLASS/*.jpg and root/{train,val,test}/CLASS/*."""

import io

import numpy as np
import pytest
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import iter_samples, open_source

FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}


def pixels(seed: int, size: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def put(root, rel, seed=0):
    """Write a real (tiny) image in the format its extension names."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fmt = FORMATS[rel.rsplit(".", 1)[-1].lower()]
    Image.fromarray(pixels(seed)).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP"
                                                           else {}))
    path.write_bytes(buf.getvalue())
    return path


def flat_tree(root):
    """A dozen images in three classes, every supported extension, a nested folder and clutter."""
    for rel, seed in [("dog/d1.jpg", 1), ("dog/d2.JPEG", 2), ("dog/d3.png", 3),
                      ("cat/c1.jpg", 4), ("cat/c2.bmp", 5), ("cat/c3.webp", 6),
                      ("cat/sub/c4.PNG", 7), ("bird/b1.jpeg", 8), ("bird/b2.jpg", 9),
                      ("bird/b3.Jpg", 10), ("bird/b 4.png", 11), ("bird/b5.BMP", 12)]:
        put(root, rel, seed)
    (root / "cat/notes.txt").write_text("not an image")
    (root / "cat/labels.csv").write_text("a,b")
    (root / "dog/.hidden.jpg").write_bytes(b"junk")
    (root / ".cache").mkdir()
    put(root, ".cache/x.jpg")
    (root / "README.md").write_text("loose non-image files are ignored")
    return root


# --- what the adapter lists ----------------------------------------------------------------------
def test_flat_tree_is_one_train_split(tmp_path):
    root = flat_tree(tmp_path / "tree")
    src = open_source("imagefolder", root)
    assert src.splits() == ["train"] and src.classes == ["bird", "cat", "dog"]
    assert src.extra_labels == {} and src.name == "tree"
    refs = src.refs("train")
    assert [r.path for r in refs] == [
        "bird/b 4.png", "bird/b1.jpeg", "bird/b2.jpg", "bird/b3.Jpg", "bird/b5.BMP",
        "cat/c1.jpg", "cat/c2.bmp", "cat/c3.webp", "cat/sub/c4.PNG",
        "dog/d1.jpg", "dog/d2.JPEG", "dog/d3.png"]
    assert [r.label for r in refs] == [0] * 5 + [1] * 4 + [2] * 3
    assert [r.ext for r in refs] == ["png", "jpg", "jpg", "jpg", "bmp", "jpg", "bmp", "webp",
                                     "png", "jpg", "jpg", "png"]
    assert [r.key for r in refs[:2]] == ["bird_b_4", "bird_b1"] and refs[8].key == "cat_sub_c4"
    keys = [r.key for r in refs]
    assert len(set(keys)) == len(keys) == 12
    for ref in refs:
        assert ref.split == "train" and ref.extra == ()
        assert ref.locator == str((root / ref.path).resolve())
        assert ref.size == (root / ref.path).stat().st_size
    assert src.skipped == {"train": 2}  # notes.txt and labels.csv


def test_read_returns_the_file_bytes_unchanged(tmp_path):
    root = flat_tree(tmp_path / "tree")
    src = open_source("imagefolder", root)
    for ref in src.refs("train"):
        assert src.read(ref) == (root / ref.path).read_bytes()
    png = next(r for r in src.refs("train") if r.path == "cat/sub/c4.PNG")
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(src.read(png)))), pixels(7))


def test_listing_is_deterministic(tmp_path):
    root = flat_tree(tmp_path / "tree")
    a = open_source("imagefolder", root).refs("train")
    b = open_source("imagefolder", root).refs("train")
    assert a == b


def test_split_folders_become_splits(tmp_path):
    root = tmp_path / "tree"
    for split, classes, n in (("train", ("cat", "dog", "owl"), 2), ("val", ("cat", "dog"), 1),
                              ("test", ("owl", "cat"), 1)):
        for c in classes:
            for i in range(n):
                put(root, f"{split}/{c}/{i}.jpg", seed=i)
    src = open_source("imagefolder", root)
    assert src.splits() == ["train", "val", "test"] and src.classes == ["cat", "dog", "owl"]
    assert [r.label for r in src.refs("train")] == [0, 0, 1, 1, 2, 2]
    assert [(r.key, r.label) for r in src.refs("test")] == [("test_cat_0", 0), ("test_owl_0", 2)]
    assert src.refs("val")[1].path == "val/dog/0.jpg" and src.refs("val")[1].split == "val"
    keys = [r.key for s in src.splits() for r in src.refs(s)]
    assert len(set(keys)) == len(keys) == 10
    samples = list(iter_samples(src, "val"))
    assert [(s.key, s.label, s.ext, s.split) for s in samples] == [
        ("val_cat_0", 0, "jpg", "val"), ("val_dog_0", 1, "jpg", "val")]
    assert samples[0].data == (root / "val/cat/0.jpg").read_bytes()
    assert samples[0].meta == {"path": "val/cat/0.jpg"}


def test_splits_option(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val", "test"):
        put(root, f"{split}/cat/0.jpg")
        put(root, f"{split}/dog/0.jpg")
    src = open_source("imagefolder", root, splits="test, train")
    assert src.splits() == ["train", "test"] and src.classes == ["cat", "dog"]
    with pytest.raises(DataError, match=r"splits='train,valid' names valid; this tree has "
                                        r"train, val, test"):
        open_source("imagefolder", root, splits="train,valid")
    with pytest.raises(DataError, match="no split 'val'"):
        src.refs("val")


def test_without_train_the_classes_are_the_union(tmp_path):
    root = tmp_path / "tree"
    put(root, "val/cat/0.jpg")
    put(root, "test/dog/0.jpg")
    src = open_source("imagefolder", root)
    assert src.splits() == ["val", "test"] and src.classes == ["cat", "dog"]
    assert src.refs("test")[0].label == 1


def test_iter_samples_over_a_flat_tree(tmp_path):
    root = flat_tree(tmp_path / "tree")
    samples = list(iter_samples(open_source("imagefolder", root), "train"))
    assert len(samples) == 12 and samples[0].key == "bird_b_4"
    assert all(s.data == (root / s.meta["path"]).read_bytes() for s in samples)


def test_links_inside_the_class_are_followed(tmp_path):
    root = tmp_path / "tree"
    put(root, "cat/0.jpg", 1)
    put(root, "dog/0.jpg", 2)
    put(root, "dog/.kept/1.jpg", 3)
    (root / "dog/alias.jpg").symlink_to(root / "dog/.kept/1.jpg")
    (root / "dog/loop").symlink_to(root / "dog")  # a folder link back to itself is walked once
    src = open_source("imagefolder", root)
    refs = {r.path: r for r in src.refs("train")}
    assert sorted(refs) == ["cat/0.jpg", "dog/0.jpg", "dog/alias.jpg"]
    assert src.read(refs["dog/alias.jpg"]) == (root / "dog/.kept/1.jpg").read_bytes()
    (root / "cat/alias.jpg").symlink_to(root / "dog/0.jpg")  # into another class: refused
    with pytest.raises(DataError, match=r"cat/alias.jpg links outside its class folder"):
        open_source("imagefolder", root)


# --- bad inputs --------------------------------------------------------------------------------
def test_unknown_class_folder_in_val_is_named(tmp_path):
    put(tmp_path / "t", "train/cat/1.jpg")
    put(tmp_path / "t", "val/cat/1.jpg")
    put(tmp_path / "t", "val/bird/1.jpg")
    with pytest.raises(DataError, match=r"class folder .*t/val/bird is not a class of the first "
                                        r"split \(train/"):
        open_source("imagefolder", tmp_path / "t")


def test_empty_class_folder_is_named(tmp_path):
    put(tmp_path / "e", "cat/1.jpg")
    (tmp_path / "e/dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*e/dog holds no images"):
        open_source("imagefolder", tmp_path / "e")
    # hidden files and other extensions do not count as images
    (tmp_path / "e/dog/.x.jpg").write_bytes(b"x")
    (tmp_path / "e/dog/readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*e/dog holds no images"):
        open_source("imagefolder", tmp_path / "e")


def test_empty_class_folder_in_a_split_is_named(tmp_path):
    put(tmp_path / "s", "train/cat/1.jpg")
    (tmp_path / "s/val/cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*s/val/cat holds no images"):
        open_source("imagefolder", tmp_path / "s")


@pytest.mark.parametrize("first, second", [("cat/1.jpg", "cat/1.png"),
                                           ("cat/a b.jpg", "cat/a_b.jpg"),
                                           ("cat/x.y.png", "cat/x_y.webp")])
def test_two_files_with_one_key_are_both_named(tmp_path, first, second):
    put(tmp_path / "d", first)
    put(tmp_path / "d", second)
    a, b = sorted([first, second])
    with pytest.raises(DataError, match=rf"{a} and {b} map to the same sample key"):
        open_source("imagefolder", tmp_path / "d")


def test_file_link_outside_the_root_is_refused(tmp_path):
    put(tmp_path / "outside", "x.jpg")
    put(tmp_path / "r", "cat/1.jpg")
    (tmp_path / "r/cat/2.jpg").symlink_to(tmp_path / "outside/x.jpg")
    with pytest.raises(DataError, match=r"r/cat/2.jpg links outside .*refusing it"):
        open_source("imagefolder", tmp_path / "r")


def test_folder_link_outside_the_root_is_refused(tmp_path):
    put(tmp_path / "outside", "dogs/x.jpg")
    put(tmp_path / "r", "cat/1.jpg")
    (tmp_path / "r/dog").symlink_to(tmp_path / "outside/dogs")
    with pytest.raises(DataError, match=r"r/dog links outside"):
        open_source("imagefolder", tmp_path / "r")
    (tmp_path / "r/dog").unlink()
    (tmp_path / "r/cat/more").symlink_to(tmp_path / "outside/dogs")
    with pytest.raises(DataError, match=r"r/cat/more links outside"):
        open_source("imagefolder", tmp_path / "r")


def test_broken_link_is_named(tmp_path):
    put(tmp_path / "r", "cat/1.jpg")
    (tmp_path / "r/cat/2.jpg").symlink_to(tmp_path / "r/cat/gone.jpg")
    with pytest.raises(DataError, match=r"r/cat/2.jpg is a broken link"):
        open_source("imagefolder", tmp_path / "r")


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"imagefolder: .*nowhere not found"):
        open_source("imagefolder", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no class folders"):
        open_source("imagefolder", tmp_path / "empty")
    put(tmp_path / "loose", "cat/1.jpg")
    put(tmp_path / "loose", "stray.png")
    with pytest.raises(DataError, match=r"image .*loose/stray.png lies outside any class folder"):
        open_source("imagefolder", tmp_path / "loose")
    put(tmp_path / "mixed", "train/cat/1.jpg")
    put(tmp_path / "mixed", "dog/1.jpg")
    with pytest.raises(DataError, match=r"holds split folders \(train\) and also other folders "
                                        r"\(dog\)"):
        open_source("imagefolder", tmp_path / "mixed")
    put(tmp_path / "flatsplit", "train/1.jpg")
    with pytest.raises(DataError, match=r"flatsplit/train/1.jpg lies outside any class folder"):
        open_source("imagefolder", tmp_path / "flatsplit")
    (tmp_path / "nosplitclasses/val").mkdir(parents=True)
    (tmp_path / "nosplitclasses/val/readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"nosplitclasses/val holds no class folders"):
        open_source("imagefolder", tmp_path / "nosplitclasses")
