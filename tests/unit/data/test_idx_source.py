import io

import numpy as np
import pytest
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import iter_samples, open_source
from ltscale.data.sources.idx import read_idx
from tests.conftest import write_idx


def test_reads_splits_and_encodes_png_losslessly(tiny_idx):
    src = open_source("idx", tiny_idx)
    assert src.splits() == ["train", "test"]
    assert len(src.refs("train")) == 60 and len(src.refs("test")) == 12
    assert src.classes == ["0", "1", "2"]
    samples = list(iter_samples(src, "train"))
    raw = read_idx(tiny_idx / "train-images-idx3-ubyte.gz")
    decoded = np.array(Image.open(io.BytesIO(samples[5].data)))
    np.testing.assert_array_equal(decoded, raw[5])
    assert samples[5].label == 5 % 3 and samples[5].key == "train-000005"


def test_plain_and_gzip_files_read_the_same(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    a = read_idx(write_idx(tmp_path / "a-idx3-ubyte", arr, gz=False))
    b = read_idx(write_idx(tmp_path / "b-idx3-ubyte.gz", arr, gz=True))
    np.testing.assert_array_equal(a, arr)
    np.testing.assert_array_equal(b, arr)


def test_wrong_magic_names_the_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        read_idx(bad)


def test_truncated_body_is_reported_with_sizes(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5)), gz=False)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"x-idx3-ubyte: IDX body has 93 bytes .* declares 100"):
        read_idx(path)


def test_truncated_gzip_is_reported(tmp_path):
    path = write_idx(tmp_path / "y-idx3-ubyte.gz", np.zeros((40, 5, 5)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="y-idx3-ubyte.gz: cannot decompress"):
        read_idx(path)


def test_missing_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        open_source("idx", tmp_path / "nowhere")


def test_images_without_labels_are_refused(tiny_idx):
    (tiny_idx / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        open_source("idx", tiny_idx)


def test_label_count_mismatch_is_refused(tiny_idx):
    write_idx(tiny_idx / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(DataError, match="5 labels for 12 images"):
        open_source("idx", tiny_idx)
