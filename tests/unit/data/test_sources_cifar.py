"""CIFAR-10 / CIFAR-100 adapter on miniature copies written in the public "python version" format.

The public files are dicts pickled at protocol 2 whose keys (and class names, file names) load as
byte strings: CIFAR-10 batches hold b'batch_label', b'labels', b'data', b'filenames' and
batches.meta holds b'num_cases_per_batch', b'label_names', b'num_vis'; CIFAR-100 batches hold
b'filenames', b'batch_label', b'fine_labels', b'coarse_labels', b'data' and meta holds
b'fine_label_names', b'coarse_label_names'. ``data`` is an N×3072 uint8 array: 1024 red, 1024
green, then 1024 blue values of a 32×32 image, row-major.
"""

import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import iter_samples, open_source
from tests.conftest import read_in_forked_child

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
C10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


def load(path):
    return pickle.loads(path.read_bytes(), encoding="bytes")


def images(rng, n):
    """n random images in CIFAR row layout, with a mark that tells the colour planes apart."""
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[:, 0], data[:, 1024], data[:, 2048] = 10, 20, 30  # pixel (0, 0) is R=10, G=20, B=30
    return data


def write_cifar10(root, per_batch=2, test=2, dumper=dump):
    """5 train batches of ``per_batch`` images and a test batch: a dozen images by default."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(10)
    dumper(root / "batches.meta", {b"num_cases_per_batch": per_batch,
                                   b"label_names": [n.encode() for n in C10_NAMES],
                                   b"num_vis": 3072})
    for b, name in enumerate(C10_TRAIN + ["test_batch"]):
        n = test if name == "test_batch" else per_batch
        label = b"testing batch 1 of 1" if name == "test_batch" else f"training batch {b + 1} of 5"
        dumper(root / name, {
            b"batch_label": label if isinstance(label, bytes) else label.encode(),
            b"labels": [(3 * b + i) % 10 for i in range(n)],
            b"data": images(rng, n),
            b"filenames": [f"{C10_NAMES[(3 * b + i) % 10]}_s_{b:02d}{i:02d}.png".encode()
                           for i in range(n)],
        })
    return root


def write_cifar100(root, n_train=8, n_test=4):
    root.mkdir(parents=True)
    rng = np.random.default_rng(100)
    dump(root / "meta", {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [(13 * i + (name == "test")) % 100 for i in range(n)]
        dump(root / name, {b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
                           b"batch_label": f"{name}ing batch 1 of 1".encode(),
                           b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                           b"data": images(rng, n)})
    return root


def as_image(row: np.ndarray) -> np.ndarray:
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


def decode(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
    return np.array(img)


# --- what the adapter lists ----------------------------------------------------------------------
def test_cifar10_lists_every_batch_in_order(tmp_path):
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    src = open_source("cifar10", root)
    assert src.splits() == ["train", "test"]
    assert src.classes == C10_NAMES and src.extra_labels == {}
    train, test = src.refs("train"), src.refs("test")
    assert len(train) == 10 and len(test) == 2
    # data_batch_1 .. data_batch_5 in that order, then the test batch
    expected = [(3 * b + i) % 10 for b in range(5) for i in range(2)]
    assert [r.label for r in train] == expected
    assert [r.label for r in test] == [(15 + i) % 10 for i in range(2)]
    assert [r.key for r in train] == [f"train-{i:05d}" for i in range(10)]
    assert [r.key for r in test] == ["test-00000", "test-00001"]
    keys = [r.key for s in src.splits() for r in src.refs(s)]
    assert len(set(keys)) == len(keys) == 12
    assert all(r.ext == "png" and r.extra == () for r in train + test)
    assert train[3].path == "data_batch_2:1:deer_s_0101.png" and train[3].split == "train"
    assert test[0].path == "test_batch:0:dog_s_0500.png"


def test_cifar10_pixels_round_trip_exactly(tmp_path):
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    src = open_source("cifar10", root)
    rows = {s: np.concatenate([load(root / n)[b"data"] for n in names])
            for s, names in (("train", C10_TRAIN), ("test", ["test_batch"]))}
    for split in src.splits():
        for i, ref in enumerate(src.refs(split)):
            pixels = decode(src.read(ref))
            np.testing.assert_array_equal(pixels, as_image(rows[split][i]))
            assert tuple(pixels[0, 0]) == (10, 20, 30)  # planes are R, G, B


def test_cifar100_fine_and_coarse_labels(tmp_path):
    root = write_cifar100(tmp_path / "cifar-100-python")
    src = open_source("cifar100", root)
    assert src.splits() == ["train", "test"]
    assert len(src.classes) == 100 and src.classes[7] == "fine_7"
    assert src.extra_labels == {"coarse_label": [f"coarse_{i}" for i in range(20)]}
    train, test = src.refs("train"), src.refs("test")
    assert len(train) == 8 and len(test) == 4
    assert [r.label for r in train] == [(13 * i) % 100 for i in range(8)]
    for ref in train + test:
        assert ref.extra == (("coarse_label", ref.label // 5),)
    assert train[2].path == "train:2:img_train_2.png" and train[2].key == "train-00002"
    data = load(root / "test")[b"data"]
    for i, ref in enumerate(test):
        np.testing.assert_array_equal(decode(src.read(ref)), as_image(data[i]))


def test_iter_samples_yields_png_bytes_and_labels(tmp_path):
    src10 = open_source("cifar10", write_cifar10(tmp_path / "c10"))
    samples = list(iter_samples(src10, "test"))
    assert [(s.key, s.ext, s.label, s.split) for s in samples] == [
        ("test-00000", "png", 5, "test"), ("test-00001", "png", 6, "test")]
    assert samples[1].meta == {"path": "test_batch:1:frog_s_0501.png"}
    assert samples[0].data.startswith(b"\x89PNG\r\n\x1a\n")

    src100 = open_source("cifar100", write_cifar100(tmp_path / "c100"))
    samples = list(iter_samples(src100, "train"))
    assert len(samples) == 8
    assert all(s.meta["coarse_label"] == s.label // 5 for s in samples)
    assert samples[3].meta["path"] == "train:3:img_train_3.png"


def test_read_works_in_a_forked_worker(tmp_path):
    src = open_source("cifar10", write_cifar10(tmp_path / "c10"))
    ref = src.refs("train")[7]
    assert read_in_forked_child(src, ref) == b"ok"


def test_parent_folder_of_the_extracted_archive_is_accepted(tmp_path):
    write_cifar10(tmp_path / "download" / "cifar-10-batches-py")
    assert len(open_source("cifar10", tmp_path / "download").refs("train")) == 10


def test_splits_option_reads_only_those_batches(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    for name in C10_TRAIN:
        (root / name).unlink()
    src = open_source("cifar10", root, splits="test")
    assert src.splits() == ["test"] and len(src.refs("test")) == 2
    assert open_source("cifar100", write_cifar100(tmp_path / "c100"),
                       splits=" test , train").splits() == ["train", "test"]
    with pytest.raises(DataError, match=r"splits='train,val'.*val.*choose from train, test"):
        open_source("cifar10", root, splits="train,val")
    with pytest.raises(DataError, match="no split 'train'"):
        src.refs("train")


# --- the files as the original Python 2 pickler wrote them ---------------------------------------
class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote at protocol 2: every string is a byte string
    (BINSTRING) and numpy arrays are rebuilt by numpy.core.multiarray._reconstruct."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)


def py2_dump(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def test_python2_pickles_load_like_the_public_files(tmp_path):
    root = write_cifar10(tmp_path / "c10", dumper=py2_dump)
    raw = (root / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw and b"X\x04\x00\x00\x00data" not in raw  # no unicode strings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy 2's DeprecationWarning for numpy.core
        src = open_source("cifar10", root)
    assert src.classes == C10_NAMES and len(src.refs("train")) == 10
    expected = load(root / "data_batch_3")[b"data"][1]
    np.testing.assert_array_equal(decode(src.read(src.refs("train")[5])), as_image(expected))
    assert src.refs("train")[5].path == "data_batch_3:1:horse_s_0201.png"


# --- bad inputs --------------------------------------------------------------------------------
def test_truncated_pickle_names_the_file(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    (root / "data_batch_3").write_bytes((root / "data_batch_3").read_bytes()[:700])
    with pytest.raises(DataError, match=r"data_batch_3: truncated or corrupt .*re-download"):
        open_source("cifar10", root)
    (root / "data_batch_3").write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match=r"data_batch_3: truncated or corrupt"):
        open_source("cifar10", root)
    (root / "batches.meta").write_bytes(b"")
    with pytest.raises(DataError, match=r"batches.meta: truncated or corrupt"):
        open_source("cifar10", root)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil, refused", [(_RunsShell, r"posix\.system"),
                                           (_RunsPython, r"__builtin__\.exec")])
@pytest.mark.parametrize("target", ["batches.meta", "data_batch_2", "test_batch"])
def test_malicious_pickle_is_refused_without_running(tmp_path, evil, refused, target):
    root = write_cifar10(tmp_path / "c10")
    marker = tmp_path / "MARKER_SHOULD_NOT_EXIST"
    batch = load(root / target)
    batch[b"label_names" if target == "batches.meta" else b"labels"] = evil(marker)
    dump(root / target, batch)
    with pytest.raises(DataError, match=rf"{target}: refusing to load {refused}"):
        open_source("cifar10", root)
    assert not marker.exists()


def test_unexpected_codec_in_pickle_is_refused(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    # _codecs.encode is allowed only for latin-1, the way protocol 2 stores bytes
    payload = (b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01c_codecs\nencode\nq\x02X\x01\x00\x00\x00a"
               b"X\x05\x00\x00\x00rot13\x86R.")
    (root / "test_batch").write_bytes(payload[:-1] + b"s.")
    with pytest.raises(DataError, match=r"test_batch: truncated or corrupt.*rot13"):
        open_source("cifar10", root)


def test_missing_batch_file_is_named(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    (root / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"batch file not found: .*c10/data_batch_4"):
        open_source("cifar10", root)
    root = write_cifar100(tmp_path / "c100")
    (root / "test").unlink()
    with pytest.raises(DataError, match=r"batch file not found: .*c100/test"):
        open_source("cifar100", root)


def test_missing_folder_or_meta(tmp_path):
    with pytest.raises(DataError, match=r"cifar10: folder not found: .*nowhere.*cifar-10-python"):
        open_source("cifar10", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cifar100: meta not found in .*empty"):
        open_source("cifar100", tmp_path / "empty")


def test_label_out_of_range_names_file_and_row(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    batch = load(root / "data_batch_5")
    batch[b"labels"][1] = 10
    dump(root / "data_batch_5", batch)
    with pytest.raises(DataError, match=r"data_batch_5: row 1 has label 10, outside the 10 "
                                        r"classes named in batches.meta"):
        open_source("cifar10", root)
    batch[b"labels"][1] = -1
    dump(root / "data_batch_5", batch)
    with pytest.raises(DataError, match=r"data_batch_5: row 1 has label -1"):
        open_source("cifar10", root)


def test_coarse_label_out_of_range_names_file_and_row(tmp_path):
    root = write_cifar100(tmp_path / "c100")
    batch = load(root / "train")
    batch[b"coarse_labels"][6] = 20
    dump(root / "train", batch)
    with pytest.raises(DataError, match=r"c100/train: row 6 has label 20, outside the 20 classes"):
        open_source("cifar100", root)


def test_wrong_data_shape_or_dtype_names_the_file(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    batch = load(root / "test_batch")
    batch[b"data"] = batch[b"data"][:, :1024]
    dump(root / "test_batch", batch)
    with pytest.raises(DataError, match=r"test_batch: 'data' should be an N×3072 uint8 array.*"
                                        r"\(2, 1024\)"):
        open_source("cifar10", root)
    batch[b"data"] = np.zeros((2, 3072), dtype=np.int64)
    dump(root / "test_batch", batch)
    with pytest.raises(DataError, match=r"test_batch: .*dtype int64"):
        open_source("cifar10", root)


def test_label_and_data_length_mismatch_names_the_file(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    batch = load(root / "data_batch_2")
    batch[b"labels"] = batch[b"labels"][:1]
    dump(root / "data_batch_2", batch)
    with pytest.raises(DataError, match=r"data_batch_2: 1 labels for 2 images"):
        open_source("cifar10", root)
    root = write_cifar100(tmp_path / "c100")
    batch = load(root / "test")
    batch[b"coarse_labels"].append(0)
    dump(root / "test", batch)
    with pytest.raises(DataError, match=r"c100/test: 5 coarse_labels for 4 images"):
        open_source("cifar100", root)


def test_missing_entries_are_data_errors(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    batch = load(root / "data_batch_1")
    del batch[b"labels"]
    dump(root / "data_batch_1", batch)
    with pytest.raises(DataError, match=r"data_batch_1: no 'labels' entry"):
        open_source("cifar10", root)
    dump(root / "batches.meta", {b"num_vis": 3072})
    with pytest.raises(DataError, match=r"batches.meta: 'label_names' should be a non-empty list"):
        open_source("cifar10", root)
    dump(root / "batches.meta", [1, 2, 3])
    with pytest.raises(DataError, match=r"batches.meta: expected a pickled dict, found list"):
        open_source("cifar10", root)


def test_the_other_cifar_is_recognised(tmp_path):
    c10 = write_cifar10(tmp_path / "cifar-10-batches-py")
    c100 = write_cifar100(tmp_path / "cifar-100-python")
    with pytest.raises(DataError, match="holds CIFAR10 files; build it with kind cifar10"):
        open_source("cifar100", c10)
    with pytest.raises(DataError, match="holds CIFAR100 files; build it with kind cifar100"):
        open_source("cifar10", c100)
    # a CIFAR-100 meta file under the CIFAR-10 name
    (c10 / "batches.meta").write_bytes((c100 / "meta").read_bytes())
    with pytest.raises(DataError, match="is a CIFAR100 meta file; build it with kind cifar100"):
        open_source("cifar10", c10)
