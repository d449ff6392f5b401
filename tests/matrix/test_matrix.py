"""The correctness matrix: every registered pretraining method × every backend (local; DDP and
DeepSpeed ZeRO-2 on 2 gloo ranks) × every precision, on CPU (``-m matrix``; CI runs it).

Per cell: the loss falls over a few steps on a fixed batch; every EMA/target tensor moves; what
the method declares ``keep_fp32`` is fp32; the backbone receives channels-last images; the kNN
monitor runs and the exported encoder holds fp32 weights equal to the master copy. Per fp32 cell:
a run whose rank is SIGKILLed mid-epoch and relaunched ends ``torch.equal`` to the uninterrupted
run. Each launch covers all methods of one (backend, precision), so the matrix costs
``len(backends) × (len(precisions) + 1 + kills)`` process starts, not one per cell.

fp16 cells are skipped on CPU: DeepSpeed's CPU accelerator has no fp16, and fp16 loss scaling
is a GPU path (``tests/gpu`` runs it on CUDA)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.matrix.cells import backend_names, method_names, precisions

pytestmark = pytest.mark.matrix

CELLS = [(m, b, p) for b in backend_names() for p in precisions() for m in method_names()]
IDS = [f"{m}-{b}-{p}" for m, b, p in CELLS]


def _skip_unsupported(backend: str, precision: str) -> None:
    if precision == "fp16" and not torch.cuda.is_available():
        pytest.skip("fp16 needs CUDA (DeepSpeed's CPU accelerator has none); the gpu tier "
                    "covers it")
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")


def _checks(launches, method, backend, precision) -> dict:
    _skip_unsupported(backend, precision)
    launch = launches(backend, precision, "checks")
    path = launch.out / f"checks-{method}.json"
    assert launch.rc == 0 and path.exists(), launch.output()
    return json.loads(path.read_text())


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_loss_falls_on_a_fixed_batch(launches, method, backend, precision):
    losses = _checks(launches, method, backend, precision)["losses"]
    assert all(map(lambda v: v == v and abs(v) != float("inf"), losses)), losses
    assert min(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_every_ema_target_tensor_moves(launches, method, backend, precision):
    moved = _checks(launches, method, backend, precision)["ema_moved"]
    frozen = [name for name, (target, online) in moved.items() if online and not target]
    assert not frozen, (f"{len(frozen)} of {len(moved)} target tensors did not follow their "
                        f"online tensors: {frozen[:5]}")
    if moved:  # and the online network did train (most of its tensors moved)
        assert sum(online for _, online in moved.values()) >= 0.9 * len(moved), moved


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_tensors_declared_keep_fp32_stay_fp32(launches, method, backend, precision):
    checks = _checks(launches, method, backend, precision)
    wrong = {k: v for k, v in checks["kept_dtypes"].items() if v != "torch.float32"}
    assert not wrong, wrong


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_backbone_receives_channels_last_images(launches, method, backend, precision):
    layouts = _checks(launches, method, backend, precision)["layouts"]
    assert layouts and all(layouts), layouts


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_knn_monitor_and_export_use_the_fp32_master_weights(launches, method, backend,
                                                              precision):
    _checks(launches, method, backend, precision)
    launch = launches(backend, precision, "checks")
    export = json.loads((launch.out / method / f"export-{method}.json").read_text())
    assert export["all_fp32"] and export["equal_master"], export
    assert all(isinstance(k, float) for k in export["knn"]), export  # every epoch scored


RESUME_CELLS = [c for c in CELLS if c[2] == "fp32"]


@pytest.mark.parametrize("method,backend,precision", RESUME_CELLS,
                         ids=[f"{m}-{b}-{p}" for m, b, p in RESUME_CELLS])
def test_sigkill_mid_epoch_then_relaunch_equals_the_uninterrupted_run(launches, method, backend,
                                                                      precision):
    _skip_unsupported(backend, precision)
    reference = launches(backend, precision, "checks")
    resumed = launches(backend, precision, "resume")
    assert resumed.rc == 0, resumed.output()
    assert (resumed.out / method / f"killed-{method}").exists(), resumed.output()
    assert f"resuming from checkpoint-000000004.pt" in resumed.output(), resumed.output()
    got = torch.load(resumed.out / method / f"final-{method}.pt", weights_only=True)
    want = torch.load(reference.out / method / f"final-{method}.pt", weights_only=True)
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ after the resume: {different[:5]}"
