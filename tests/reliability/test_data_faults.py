"""Data faults met by a real training run (``train.py`` in this process: real sampler, shard
check, loader with 2 workers, ``fit``): a corrupt JPEG and a truncated tar shard under the strict
(``fail``) and lenient (``skip``) policies, and shards changed after indexing.

45 JPEGs, one process, global batch 9, 2 epochs: every epoch reads every sample exactly once, so
what a lenient run did not train on is exactly what it counted as skipped.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from ltscale.core.errors import DataError
from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest
from tests.conftest import make_jpeg_dataset
from tests.reliability import train
from tests.reliability.conftest import Data, load_state, read_steps

pytestmark = pytest.mark.reliability
CORRUPT = "bee_bee_004"
EPOCHS = 2

_HAS_DALI = importlib.util.find_spec("nvidia") is not None and \
    importlib.util.find_spec("nvidia.dali") is not None
LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not _HAS_DALI, reason="DALI is not installed (pip install nvidia-dali-cuda130)"))]


def _run(data: Data, out: Path, *extra: str) -> list[dict]:
    train.main(["--data", str(data.shards), "--manifest", str(data.manifest), "--out", str(out),
                "--global-batch", "9", "--epochs", str(EPOCHS), "--dropout", "0", *extra])
    return load_state(out / "final.pt")["history"]


def _positions(data: Data, keys) -> set[int]:
    """Manifest positions of the samples with ``keys``."""
    index = ShardIndex.load(data.shards).load_all()
    ids, _ = Manifest.load(data.manifest).rows("labeled")
    return {p for p, row in enumerate(ids) if str(index.key[row]) in set(keys)}


def _trained(out: Path, epoch: int) -> set[int]:
    steps = [s for s in read_steps(out) if s["epoch"] == epoch]
    seen = [p for s in steps for p in s["positions"]]
    assert len(seen) == len(set(seen))
    return set(seen)


def _shard_of(data: Data, key: str) -> str:
    index = ShardIndex.load(data.shards).load_all()
    row = list(index.key).index(key)
    return index.shards[int(index.shard[row])]


@pytest.fixture
def corrupt_jpeg(tmp_path) -> Data:
    return Data(*make_jpeg_dataset(tmp_path / "data", 15, corrupt_key="bee_004", shard_bytes=12000))


@pytest.fixture
def truncated(tmp_path) -> tuple[Data, set[str], str]:
    """A clean dataset whose 4th shard is cut inside its second image: (data, lost keys, shard)."""
    data = Data(*make_jpeg_dataset(tmp_path / "data", 15, shard_bytes=12000))
    index = ShardIndex.load(data.shards).load_all()
    rows = np.flatnonzero(index.shard == 3)
    assert len(rows) >= 3
    cut = int(index.offset[rows[1]]) + int(index.size[rows[1]]) // 2
    name = index.shards[3]
    os.truncate(data.shards / name, cut)
    lost = {str(index.key[r]) for r in rows if index.offset[r] + index.size[r] > cut}
    return data, lost, name


@pytest.mark.parametrize("loader", LOADERS)
def test_corrupt_jpeg_strict_stops_naming_shard_and_key(corrupt_jpeg, tmp_path, loader):
    shard = _shard_of(corrupt_jpeg, CORRUPT)
    with pytest.raises(DataError, match=rf"sample {CORRUPT} in shard {shard}: cannot decode"):
        _run(corrupt_jpeg, tmp_path / "out", "--loader", loader)
    assert not (tmp_path / "out" / "final.pt").exists()


@pytest.mark.parametrize("loader", LOADERS)
def test_corrupt_jpeg_lenient_finishes_and_counts_the_lost_sample(corrupt_jpeg, tmp_path, loader,
                                                                 capfd):
    history = _run(corrupt_jpeg, tmp_path / "out", "--on-error", "skip", "--loader", loader)
    assert [h["data/skipped"] for h in history] == [1.0] * EPOCHS
    bad = _positions(corrupt_jpeg, {CORRUPT})
    for epoch in range(EPOCHS):
        assert _trained(tmp_path / "out", epoch) == set(range(45)) - bad
    assert f"skipped 1 unreadable samples: {CORRUPT}" in capfd.readouterr().err


def test_truncated_shard_strict_stops_naming_shard_and_key(truncated, tmp_path):
    data, lost, shard = truncated
    with pytest.raises(DataError, match=rf"in shard {shard}: the shard ends after") as err:
        _run(data, tmp_path / "out", "--check", "none")
    assert any(f"sample {key} in shard" in str(err.value) for key in lost)


@pytest.mark.parametrize("loader", LOADERS)
def test_truncated_shard_lenient_skips_exactly_the_lost_samples(truncated, tmp_path, loader):
    data, lost, _ = truncated
    history = _run(data, tmp_path / "out", "--check", "none", "--on-error", "skip",
                   "--loader", loader)
    assert [h["data/skipped"] for h in history] == [float(len(lost))] * EPOCHS
    for epoch in range(EPOCHS):
        assert _trained(tmp_path / "out", epoch) == set(range(45)) - _positions(data, lost)


def test_truncated_shard_is_refused_before_step_0(truncated, tmp_path):
    data, _, shard = truncated
    with pytest.raises(DataError, match=rf"{shard} has \d+ bytes but was indexed with \d+"):
        _run(data, tmp_path / "out", "--check", "size")
    assert read_steps(tmp_path / "out") == []


def test_shard_changed_after_indexing_is_refused_before_step_0(tmp_path):
    data = Data(*make_jpeg_dataset(tmp_path / "data", 15, shard_bytes=12000))
    index = ShardIndex.load(data.shards).load_all()
    path = data.shards / index.shards[2]
    raw = bytearray(path.read_bytes())
    at = int(index.offset[np.flatnonzero(index.shard == 2)[0]]) + 100
    raw[at] ^= 0xFF  # one byte of image data: same size, other content
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{index.shards[2]}: SHA-256 differs"):
        _run(data, tmp_path / "out", "--check", "checksum")
    assert read_steps(tmp_path / "out") == []
    with open(path, "ab") as fh:  # grown: the cheap size check catches it
        fh.write(b"\0" * 512)
    with pytest.raises(DataError, match=rf"{index.shards[2]} has \d+ bytes but was indexed"):
        _run(data, tmp_path / "out2", "--check", "size")
    assert read_steps(tmp_path / "out2") == []
