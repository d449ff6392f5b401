"""The correctness matrix: every registered pretraining method × every backend (local; DDP and
DeepSpeed ZeRO-2 on 2 gloo ranks) × every precision, on CPU (``-m matrix``; CI runs it).

Per cell: the loss falls over a few steps on a fixed batch; every EMA/target tensor follows its
online tensor; what the method declares ``keep_fp32`` is fp32; the backbone receives
channels-last images; the kNN monitor scores every epoch and the exported encoder holds fp32
weights equal to the master copy. Per fp32 cell (every method on the local backend; on DDP and
DeepSpeed the methods of ``cells.MULTI_RANK_RESUME``, one of each kind of method state): a run
whose rank is SIGKILLed mid-epoch and relaunched ends ``torch.equal`` to the uninterrupted run. One launch covers all methods of a
(backend, precision), so the matrix costs a few process starts per backend, not one per cell.

fp16 cells are skipped on CPU: DeepSpeed's CPU accelerator has no fp16, and fp16 loss scaling
is a GPU path (the gpu tier, ``tests/gpu``, runs these checks on CUDA for every precision)."""

from __future__ import annotations

import pytest
import torch

from tests.matrix.cells import backend_names, method_names, precisions, resume_methods
from tests.matrix.harness import (
    checks_of,
    ema_problem,
    export_problem,
    fp32_problem,
    layout_problem,
    loss_problem,
    resume_problem,
)

pytestmark = pytest.mark.matrix

CELLS = [(m, b, p) for b in backend_names() for p in precisions() for m in method_names()]
IDS = [f"{m}-{b}-{p}" for m, b, p in CELLS]
RESUME_CELLS = [c for c in CELLS if c[2] == "fp32" and c[0] in resume_methods(c[1])]


def _skip_unsupported(backend: str, precision: str) -> None:
    if precision == "fp16" and not torch.cuda.is_available():
        pytest.skip("fp16 needs CUDA (DeepSpeed's CPU accelerator has none); the gpu tier "
                    "covers it")
    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")


def _checks(launches, method, backend, precision) -> dict:
    _skip_unsupported(backend, precision)
    return checks_of(launches(backend, precision, "checks"), method)


FIXED_BATCH_CHECKS = {"loss_falls": loss_problem, "ema_targets_follow": ema_problem,
                      "keep_fp32_is_fp32": fp32_problem, "backbone_gets_channels_last": layout_problem}


@pytest.mark.parametrize("check", FIXED_BATCH_CHECKS)
@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_fixed_batch(launches, method, backend, precision, check):
    """The loss falls over a few steps on a fixed batch; every EMA target follows its online
    tensors; what the method declares keep_fp32 is stored fp32; the backbone gets channels-last
    images."""
    problem = FIXED_BATCH_CHECKS[check](_checks(launches, method, backend, precision))
    assert problem is None, problem


@pytest.mark.parametrize("method,backend,precision", CELLS, ids=IDS)
def test_knn_monitor_and_export_use_the_fp32_master_weights(launches, method, backend,
                                                              precision):
    _checks(launches, method, backend, precision)
    problem = export_problem(launches(backend, precision, "checks"), method)
    assert problem is None, problem


@pytest.mark.parametrize("method,backend,precision", RESUME_CELLS,
                         ids=[f"{m}-{b}-{p}" for m, b, p in RESUME_CELLS])
def test_sigkill_mid_epoch_then_relaunch_equals_the_uninterrupted_run(launches, method, backend,
                                                                      precision):
    _skip_unsupported(backend, precision)
    resumed = launches(backend, precision, "resume")
    assert "resuming from checkpoint-000000004.pt" in resumed.output(), resumed.output()
    problem = resume_problem(resumed, launches(backend, precision, "checks"), method)
    assert problem is None, problem
