"""Files a user hands in are data, never code, and nothing is written outside the output.

* checkpoints and encoder files load with ``weights_only=True``: a pickle whose ``__reduce__``
  would write a marker file is refused, through every path that reads one (the checkpoint
  reader, a run resuming from its directory, ``--from`` encoder files), and so are CIFAR
  pickles outside their allow-list;
* tar members with ``..`` or absolute names and link members are refused by ``ltscale data
  build`` (the in-place WebDataset indexer) and reported by ``ltscale data verify`` even when
  the card was rewritten to match; the streaming loader never decodes them; no file appears
  outside the output directory;
* recipes and command-line overrides are YAML loaded safely: a ``!!python/object`` tag is an
  error, not a call.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ltscale.cli import main as cli
from ltscale.core.errors import CheckpointError, DataError
from ltscale.data.sources.cifar import load_batch
from ltscale.data.verify import verify_dataset
from ltscale.engine.checkpoint import load_checkpoint
from ltscale.models.files import load_encoder
from tests.conftest import jpeg_bytes, make_jpeg_dataset
from tests.reliability import train
from tests.reliability.conftest import Data, read_steps

pytestmark = pytest.mark.reliability


class _Payload:
    """Unpickling this (without weights_only) writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _evil_torch_file(path: Path, marker: Path, **fields) -> Path:
    torch.save({"model": _Payload(marker), **fields}, path)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """The test pickle is live: plain ``pickle.loads`` runs it (so the refusals below matter)."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.read_text() == "code ran"


def test_checkpoints_are_read_with_weights_only(tmp_path):
    marker = tmp_path / "marker"
    evil = _evil_torch_file(tmp_path / "ck.pt", marker)
    with pytest.raises(CheckpointError, match=rf"{evil}: not a readable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_run_never_unpickles_a_foreign_file_in_its_checkpoint_directory(clean_data, tmp_path,
                                                                         capfd):
    marker = tmp_path / "marker"
    out = tmp_path / "job"
    out.mkdir()
    _evil_torch_file(out / "ck-000000099.pt", marker, step=99)
    train.main(["--data", str(clean_data.shards), "--manifest", str(clean_data.manifest),
                "--out", str(out), "--epochs", "1", "--workers", "0"])
    assert not marker.exists()
    assert "skipping unreadable ck-000000099.pt" in capfd.readouterr().err
    assert [s["step"] for s in read_steps(out)] == list(range(1, 7))  # trained from the start


def test_encoder_files_given_with_from_are_read_with_weights_only(tmp_path):
    marker = tmp_path / "marker"
    evil = _evil_torch_file(tmp_path / "encoder.pt", marker, backbone="resnet_tiny",
                            cifar_stem=True, in_chans=3)
    with pytest.raises(CheckpointError, match=rf"{evil}: not a readable checkpoint"):
        load_encoder(evil, "resnet_tiny", 3)
    assert not marker.exists()


def test_cifar_pickles_outside_the_allow_list_are_refused(tmp_path, capsys):
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({"labels": _Payload(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to load (__builtin__|builtins)\.exec"):
        load_batch(folder / "data_batch_1")
    rc = cli(["data", "build", "cifar10", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and ".exec from the pickle" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


# --- tar members ----------------------------------------------------------------------------------
def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, io.BytesIO(data)


BAD_MEMBERS = {  # (member name, a fresh (TarInfo, data) pair)
    "dotdot": ("../escape.jpg", lambda: _member("../escape.jpg", b"x")),
    "nested-dotdot": ("a/../../escape.jpg", lambda: _member("a/../../escape.jpg", b"x")),
    "absolute": ("/tmp/ltscale-escape.jpg", lambda: _member("/tmp/ltscale-escape.jpg", b"x")),
    "symlink": ("s9.jpg", lambda: _member("s9.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")),
    "hardlink": ("s9.jpg", lambda: _member("s9.jpg", kind=tarfile.LNKTYPE, link="s0.jpg")),
}


def _good_shard(path: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for name, data in ((f"s{i}.jpg", jpeg_bytes(rng, i % 3)), (f"s{i}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("bad", sorted(BAD_MEMBERS))
def test_data_build_refuses_unsafe_tar_members_and_writes_nothing_outside(tmp_path, capsys, bad):
    src = tmp_path / "in"
    src.mkdir()
    _good_shard(src / "train-0.tar")
    with tarfile.open(src / "train-0.tar", "a") as tar:
        tar.addfile(*BAD_MEMBERS[bad][1]())
    before = _tree(tmp_path)
    rc = cli(["data", "build", "webdataset", str(src), "--out", str(tmp_path / "out" / "ds")])
    err = capsys.readouterr().err
    assert rc == 2, err
    name = BAD_MEMBERS[bad][0]
    assert f"tar member {name!r}" in err and ("'..' path" in err or "is a link" in err)
    assert _tree(tmp_path) == before  # not even the output directory
    assert not Path("/tmp/ltscale-escape.jpg").exists()


@pytest.mark.parametrize("bad", sorted(BAD_MEMBERS))
def test_data_verify_reports_unsafe_members_even_with_a_matching_card(tmp_path, capsys, bad):
    data = Data(*make_jpeg_dataset(tmp_path / "data", 2, shard_bytes=12000))
    card_path = data.shards / "card.json"
    card = json.loads(card_path.read_text())
    shard = data.shards / card["shards"][0]["name"]
    with tarfile.open(shard, "a") as tar:  # appended after indexing, card made to match
        tar.addfile(*BAD_MEMBERS[bad][1]())
    raw = shard.read_bytes()
    card["shards"][0] |= {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    card_path.write_text(json.dumps(card))
    report = verify_dataset(data.shards, progress=False)
    name = BAD_MEMBERS[bad][0]
    assert [str(p) for p in report.problems if name in p.what][0].startswith(shard.name)
    assert cli(["data", "verify", str(data.shards)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_data_build_and_training_write_only_inside_their_output(clean_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _good_shard(src / "train-0.tar")
    before = _tree(tmp_path)
    assert cli(["data", "build", "webdataset", str(src), "--out", str(tmp_path / "out")]) == 0
    new = _tree(tmp_path) - before
    assert new and all(p == "out" or p.startswith("out/") for p in new), new
    assert verify_dataset(tmp_path / "out", progress=False).ok
    before = _tree(tmp_path)
    data_before = _tree(clean_data.shards.parent)
    train.main(["--data", str(clean_data.shards), "--manifest", str(clean_data.manifest),
                "--out", str(tmp_path / "job"), "--epochs", "1", "--workers", "2"])
    assert all(p.startswith("job") for p in _tree(tmp_path) - before)
    assert _tree(clean_data.shards.parent) == data_before


# --- recipes are data -----------------------------------------------------------------------------
def test_python_tags_in_a_recipe_or_override_are_refused(clean_data, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    payload = f"!!python/object/apply:builtins.exec [\"open('{marker}', 'w').write('x')\"]"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: evil\nseed: {payload}\n")
    assert cli(["pretrain", str(recipe), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and "python/object/apply" in err
    recipe.write_text("name: fine\n")
    assert cli(["pretrain", str(recipe), "--no-track", f"seed={payload}"]) == 2
    err = capsys.readouterr().err
    assert "override" in err and "seed is not a valid YAML value" in err
    assert "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("bad", sorted(BAD_MEMBERS))
def test_the_streaming_loader_never_reads_unsafe_members(tmp_path, bad):
    """The streaming path reads whole shards through the ``webdataset`` library, which skips
    link members; a ``..`` or absolute member name never matches a manifest key (keys are
    checked when the dataset is built), so such a member is never decoded, and nothing is
    written anywhere. (It is ignored there rather than refused: ``data verify`` reports it.)"""
    data = Data(*make_jpeg_dataset(tmp_path / "data", 4, shard_bytes=12000))
    card_path = data.shards / "card.json"
    card = json.loads(card_path.read_text())
    shard = data.shards / card["shards"][0]["name"]
    with tarfile.open(shard, "a") as tar:
        tar.addfile(*BAD_MEMBERS[bad][1]())
    raw = shard.read_bytes()
    card["shards"][0] |= {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    card_path.write_text(json.dumps(card))
    before = _tree(tmp_path)
    train.main(["--data", str(data.shards), "--manifest", str(data.manifest),
                "--out", str(tmp_path / "job"), "--loader", "stream", "--workers", "1",
                "--global-batch", "4", "--epochs", "1", "--checkpoint-every", "0"])
    steps = read_steps(tmp_path / "job")
    assert len(steps) == 3 and all(0 <= p < 12 for s in steps for p in s["positions"])
    assert all(p.startswith("job") for p in _tree(tmp_path) - before)
    assert not Path("/tmp/ltscale-escape.jpg").exists()
