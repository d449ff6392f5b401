"""SVHN adapter on miniature copies written in the public "format 2" layout.

The public files are MATLAB v5 files holding ``X``, a 32×32×3×N uint8 array (height, width, RGB
channel, image), and ``y``, an N×1 uint8 array of labels 1…10 where 10 is the digit 0.
"""

import io

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex
from ltscale.data.sources import iter_samples, open_source, source_kinds
from tests.conftest import read_in_forked_child


def images(rng, n):
    """n random images in SVHN layout (32, 32, 3, n); pixel (0, 0) of image i is (i, 20, 30)."""
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    x[0, 0, 0, :] = np.arange(n) % 256
    x[0, 0, 1, :], x[0, 0, 2, :] = 20, 30
    return x


def write_mat(path, x, y):
    savemat(path, {"X": x, "y": y}, format="5")


def write_svhn(root, n_train=6, n_test=4, n_extra=None, seed=0):
    """A folder with train/test (and extra) files; labels cycle 1…10 from a per-split offset."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "test": n_test} | ({"extra": n_extra} if n_extra else {})
    out = {}
    for offset, (split, n) in enumerate(sizes.items()):
        x = images(rng, n)
        y = ((np.arange(n) + 3 * offset) % 10 + 1).astype(np.uint8).reshape(n, 1)
        write_mat(root / f"{split}_32x32.mat", x, y)
        out[split] = (x, y)
    return root, out


def decode(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
    return np.array(img)


def test_svhn_is_a_registered_kind():
    assert "svhn" in source_kinds()


def test_lists_train_and_test_with_digit_labels(tmp_path):
    root, files = write_svhn(tmp_path / "svhn")
    src = open_source("svhn", root)
    assert src.splits() == ["train", "test"]  # no extra file: no extra split
    assert src.classes == [str(d) for d in range(10)] and src.extra_labels == {}
    train, test = src.refs("train"), src.refs("test")
    assert len(train) == 6 and len(test) == 4
    # stored 1..10 with 10 for the digit 0 -> the digit itself
    assert [r.label for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r.label for r in test] == [4, 5, 6, 7]
    assert [r.key for r in train] == [f"train-{i:06d}" for i in range(6)]
    assert test[2].path == "test_32x32.mat:2" and test[2].split == "test"
    assert all(r.ext == "png" for r in train + test)


def test_label_ten_is_the_digit_zero(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "svhn"
    root.mkdir()
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    write_mat(root / "train_32x32.mat", images(rng, 4), y)
    write_mat(root / "test_32x32.mat", images(rng, 1), np.array([[10]], dtype=np.uint8))
    src = open_source("svhn", root)
    assert [r.label for r in src.refs("train")] == [0, 1, 9, 0]
    assert src.classes[0] == "0" and src.refs("test")[0].label == 0


def test_pixels_round_trip_exactly(tmp_path):
    root, files = write_svhn(tmp_path / "svhn", n_extra=3)
    src = open_source("svhn", root)
    for split in src.splits():
        x = files[split][0]
        for i, ref in enumerate(src.refs(split)):
            pixels = decode(src.read(ref))
            np.testing.assert_array_equal(pixels, x[:, :, :, i])
            assert tuple(pixels[0, 0]) == (i, 20, 30)  # channels are R, G, B


def test_extra_split_when_its_file_is_present(tmp_path):
    root, _ = write_svhn(tmp_path / "svhn", n_extra=5)
    src = open_source("svhn", root)
    assert src.splits() == ["train", "test", "extra"]
    extra = src.refs("extra")
    assert [r.key for r in extra] == [f"extra-{i:06d}" for i in range(5)]
    assert [r.label for r in extra] == [7, 8, 9, 0, 1]
    keys = [r.key for s in src.splits() for r in src.refs(s)]
    assert len(set(keys)) == len(keys) == 15


def test_double_labels_as_some_copies_store_them(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "svhn"
    root.mkdir()
    write_mat(root / "train_32x32.mat", images(rng, 3), np.array([[2.0], [10.0], [5.0]]))
    write_mat(root / "test_32x32.mat", images(rng, 2), np.array([[1.0], [3.0]]))
    assert [r.label for r in open_source("svhn", root).refs("train")] == [2, 0, 5]


def test_splits_option_reads_only_those_files(tmp_path):
    root, _ = write_svhn(tmp_path / "svhn", n_extra=2)
    (root / "train_32x32.mat").unlink()
    src = open_source("svhn", root, splits="test, extra")
    assert src.splits() == ["test", "extra"]
    with pytest.raises(DataError, match="no split 'train'"):
        src.refs("train")
    with pytest.raises(DataError, match=r"splits='train,val'.*val.*choose from train, test, "
                                        r"extra"):
        open_source("svhn", root, splits="train,val")


def test_iter_samples_yields_png_bytes_and_labels(tmp_path):
    root, _ = write_svhn(tmp_path / "svhn")
    samples = list(iter_samples(open_source("svhn", root), "test"))
    assert [(s.key, s.ext, s.label, s.split) for s in samples] == [
        ("test-000000", "png", 4, "test"), ("test-000001", "png", 5, "test"),
        ("test-000002", "png", 6, "test"), ("test-000003", "png", 7, "test")]
    assert samples[1].meta == {"path": "test_32x32.mat:1"}
    assert samples[0].data.startswith(b"\x89PNG\r\n\x1a\n")


def test_read_works_in_a_forked_worker(tmp_path):
    src = open_source("svhn", write_svhn(tmp_path / "svhn")[0])
    ref = src.refs("train")[4]
    assert read_in_forked_child(src, ref) == b"ok"


# --- bad inputs --------------------------------------------------------------------------------
def test_missing_folder_or_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"svhn: folder not found: .*nowhere.*train_32x32.mat"):
        open_source("svhn", tmp_path / "nowhere")
    root, _ = write_svhn(tmp_path / "svhn")
    (root / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"svhn: test_32x32.mat not found in .*svhn"):
        open_source("svhn", root)
    with pytest.raises(DataError, match=r"extra_32x32.mat not found"):
        open_source("svhn", root, splits="train,extra")


def test_truncated_or_foreign_file_names_the_file(tmp_path):
    root, _ = write_svhn(tmp_path / "svhn")
    path = root / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"train_32x32.mat: truncated or corrupt MATLAB file"):
        open_source("svhn", root)
    path.write_bytes(b"not a matlab file at all")
    with pytest.raises(DataError, match=r"train_32x32.mat: truncated or corrupt"):
        open_source("svhn", root)


def test_matlab_v73_file_is_recognised(tmp_path):
    root, _ = write_svhn(tmp_path / "svhn")
    # a v7.3 file is HDF5 behind a MATLAB text header that declares version 0x0200
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5"
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    (root / "test_32x32.mat").write_bytes(header + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"test_32x32.mat: a MATLAB v7.3 file"):
        open_source("svhn", root)


def test_label_out_of_range_names_file_and_row(tmp_path):
    rng = np.random.default_rng(3)
    root, _ = write_svhn(tmp_path / "svhn")
    for bad in (0, 11):
        y = np.array([[1], [2], [bad], [4]], dtype=np.uint8)
        write_mat(root / "test_32x32.mat", images(rng, 4), y)
        with pytest.raises(DataError, match=rf"test_32x32.mat: row 2 has label {bad}, outside "
                                            r"1…10 \(10 is the digit 0; 1 bad rows"):
            open_source("svhn", root)
    write_mat(root / "test_32x32.mat", images(rng, 2), np.array([[1.5], [2.0]]))
    with pytest.raises(DataError, match=r"test_32x32.mat: row 0 has label 1.5, not a whole"):
        open_source("svhn", root)


def test_wrong_shapes_name_the_file(tmp_path):
    rng = np.random.default_rng(4)
    root, _ = write_svhn(tmp_path / "svhn")
    path = root / "train_32x32.mat"
    # the image-first layout (N, 32, 32, 3) of other tools is not SVHN's
    write_mat(path, np.zeros((3, 32, 32, 3), np.uint8), np.ones((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"train_32x32.mat: 'X' should be a 32×32×3×N uint8 "
                                        r"array, found shape \(3, 32, 32, 3\)"):
        open_source("svhn", root)
    write_mat(path, images(rng, 3).astype(np.float32), np.ones((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"found shape \(32, 32, 3, 3\), dtype float32"):
        open_source("svhn", root)
    write_mat(path, images(rng, 3), np.ones((2, 1), np.uint8))
    with pytest.raises(DataError, match=r"train_32x32.mat: 'y' should hold one label per image "
                                        r"\(3\), found shape \(2, 1\)"):
        open_source("svhn", root)


def test_missing_variable_is_named(tmp_path):
    rng = np.random.default_rng(5)
    root, _ = write_svhn(tmp_path / "svhn")
    savemat(root / "test_32x32.mat", {"X": images(rng, 2), "labels": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"test_32x32.mat: no 'y' variable \(found: X, labels\)"):
        open_source("svhn", root)


def test_builds_shards_end_to_end(tmp_path):
    from ltscale.cli import main

    root, files = write_svhn(tmp_path / "svhn", n_train=12, n_test=5, n_extra=7)
    out = tmp_path / "shards"
    assert main(["data", "build", "svhn", str(root), "--out", str(out)]) == 0
    index = ShardIndex.load(out)
    assert index.classes == [str(d) for d in range(10)]
    for split, (_, y) in files.items():
        assert sorted(index.label[index.split_ids(split)].tolist()) == sorted(
            (y.reshape(-1) % 10).tolist())
    assert len(index) == 24
