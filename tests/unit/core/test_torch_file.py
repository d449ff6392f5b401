"""Files of tensors (``core/torch_file.py``): a write that fails or is interrupted leaves the
previous file as it was and raises what a caller can act on — the operating system's error named
with the file, or the stop signal's own exception (not torch's "unexpected pos")."""

from __future__ import annotations

import pytest
import torch

from ltscale.core import torch_file
from ltscale.core.errors import CheckpointError
from tests.conftest import FailingFile


def _failing_open(monkeypatch, exc: BaseException | None = None):
    real = open
    monkeypatch.setattr(torch_file, "open",
                        lambda path, mode="r", *a, **k: FailingFile(real(path, mode, *a, **k), 64, exc),
                        raising=False)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "state.pt"
    torch_file.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    return path


def _unchanged(path):
    assert torch_file.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143)])
def test_a_stop_during_the_write_is_raised_as_itself(saved, monkeypatch, stop):
    _failing_open(monkeypatch, stop)
    with pytest.raises(type(stop)) as raised:
        torch_file.save_checkpoint(saved, {"step": 2, "w": torch.zeros(1000)})
    assert raised.value is stop
    monkeypatch.undo()
    _unchanged(saved)


def test_a_full_disk_names_the_file_and_the_cause(saved, monkeypatch):
    _failing_open(monkeypatch)  # ENOSPC, as a full disk
    with pytest.raises(torch_file.CheckpointWriteError, match=f"{saved}.*No space left.*errno 28"):
        torch_file.save_checkpoint(saved, {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    _unchanged(saved)


def test_a_damaged_file_is_one_line_naming_it(saved):
    saved.write_bytes(saved.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=f"{saved}: not a readable checkpoint") as err:
        torch_file.load_checkpoint(saved)
    assert "\n" not in str(err.value)
