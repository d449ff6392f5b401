"""Self-training (Yang & Xu 2020): pseudo-labels from a constructed teacher (threshold, no leakage
of D_U's true labels), the ω-weighted supervised loss against a hand computation, the student's
combined training set, and the stage on a tiny dataset."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltscale import pipeline
from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import ManifestError, RecipeError
from ltscale.data.manifest import ROLES, Manifest
from ltscale.finetune import selftrain as st
from ltscale.methods import create_method
from ltscale.models import create_backbone
from ltscale.models.classifier import new_head
from ltscale.models.files import write_head
from ltscale.stages.context import make_context
from ltscale.stages.networks import new_encoder, save_encoder
from ltscale.stages.results import Budget, FinetuneResult, TrainResult
from ltscale.stages.selftrain import (
    check_pool,
    finetuned_teacher,
    pseudo_label_pool,
    run_selftrain,
    scratch_teacher,
)
from ltscale.track.tracker import NullTracker

MEAN, STD = 0.5, 0.25
STRENGTH = torch.tensor([5.0, 5.0, 0.0])  # the teacher is sure of classes 0 and 1, not of 2


class PixelTeacher(nn.Module):
    """Reads the class from pixel (0, 0), which the tiny dataset sets to 100 · label; its logits
    are ``STRENGTH[c]`` on that class and 0 elsewhere (uniform for class 2: argmax 0)."""

    def logits(self, x):
        value = (x[:, 0, 0, 0] * STD + MEAN) * 255
        cls = torch.round(value / 100).long().clamp(0, 2)
        return F.one_hot(cls, 3).float() * STRENGTH[cls, None]

    forward = logits


class Recorder(NullTracker):
    def __init__(self):
        self.metrics = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)


def _scratch(model: nn.Module) -> TrainResult:
    """A stand-in for the CE-from-scratch baseline's result: only its trained model is read."""
    return TrainResult(method=model, history=[], seconds=0.0, encoder=None)


def _ctx(tiny_idx, tmp_path, out="out", multiple=2.0, **selftrain):
    recipe = recipe_from_dict({
        "output_dir": str(tmp_path / out), "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(tiny_idx)},
                 "shards": str(tmp_path / "shards"), "image_size": 8, "channels": 1,
                 "mean": [MEAN], "std": [STD], "loader": {"check": "none"}},
        "manifest": {"imbalance": "none", "noise": "none", "max_per_class": 5,
                     "unlabeled": {"multiple": multiple}},
        "pretrain": {"backbone": {"name": "resnet_tiny"}},
        "selftrain": {"enabled": True, "epochs": 1, "batch_size": 8, "workers": 0,
                      "optim": {"name": "sgd", "lr": 0.05, "warmup_epochs": 0}, **selftrain}})
    return make_context(recipe, tracker=Recorder(), progress=False)


# --- pseudo-labels from logits -------------------------------------------------------------------

def test_threshold_keeps_only_confident_argmaxes():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.9], [0.0, 0.0, 9.0]])
    probs = torch.softmax(logits, 1).max(1).values.numpy()
    labels, predicted, conf = st.assign_pseudo_labels(logits, 0.0)
    assert predicted.tolist() == [0, 0, 1, 2] and labels.tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(conf, probs, rtol=1e-6)
    labels, predicted, _ = st.assign_pseudo_labels(logits, 0.6)  # p = .84, .33, .40, .9998
    assert labels.tolist() == [0, -1, -1, 2] and predicted.tolist() == [0, 0, 1, 2]
    labels, _, _ = st.assign_pseudo_labels(logits, float(probs[1]))  # p ≥ threshold is kept
    assert labels.tolist() == [0, 0, 1, 2]
    assert st.assign_pseudo_labels(logits, 1.0)[0].tolist() == [-1, -1, -1, -1]
    with pytest.raises(RecipeError, match="selftrain.threshold"):
        st.assign_pseudo_labels(logits, 1.5)


# --- the combined training set -------------------------------------------------------------------

def _manifest(ids, observed, clean, roles):
    role = np.array([ROLES.index(r) for r in roles], dtype=np.int8)
    return Manifest(ids=np.array(ids), observed=np.array(observed), clean=np.array(clean),
                    role=role, header={"num_classes": 3, "hash": "test"})


def test_combined_set_is_labeled_then_kept_pseudo_labels_with_weight_omega():
    m = _manifest([3, 7, 9, 11, 12, 20], [0, 2, -1, -1, 1, -1], [0, 2, 1, 0, 1, 2],
                  ["labeled", "labeled", "unlabeled", "unlabeled", "labeled", "unlabeled"])
    pseudo = st.PseudoLabels(rows=np.array([9, 11, 20]), predicted=np.array([1, 2, 2]),
                             confidence=np.array([0.9, 0.4, 0.7], dtype=np.float32),
                             threshold=0.5)
    assert pseudo.labels.tolist() == [1, -1, 2]
    s = st.combined_training_set(m, pseudo, weight=0.25)
    assert s.rows.tolist() == [3, 7, 12, 9, 20]
    assert s.labels.tolist() == [0, 2, 1, 1, 2]
    assert s.weights.tolist() == [1, 1, 1, 0.25, 0.25]
    assert s.pseudo.tolist() == [False, False, False, True, True]
    assert s.class_counts(3).tolist() == [1, 2, 2]  # what the student's loss is told
    with pytest.raises(RecipeError, match="weight"):
        st.combined_training_set(m, pseudo, weight=-1)

    metrics = st.pseudo_label_metrics(pseudo, m)
    assert metrics["selftrain/pool"] == 3 and metrics["selftrain/kept"] == 2
    assert metrics["selftrain/pseudo_accuracy"] == 1.0  # rows 9 and 20 kept, both right
    assert metrics["selftrain/teacher_pool_accuracy"] == pytest.approx(2 / 3)
    assert [metrics[f"selftrain/pseudo_count_{c}"] for c in range(3)] == [0, 1, 1]


# --- the weighted supervised loss ----------------------------------------------------------------

def test_weighted_supervised_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 2.0, 1.0])
    method = create_method("supervised", create_backbone("resnet_tiny", in_chans=3),
                           num_classes=3, class_counts=[3, 2, 1], loss="ce",
                           sample_weights=weights)
    method.eval()  # fixed BN statistics: logits do not depend on the batch's composition
    x = torch.randn(5, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 1, 0])
    positions = torch.tensor([6, 0, 3, 5, 4])
    with torch.no_grad():
        got = method((x, y, positions))["loss"]
        ce = F.cross_entropy(method.logits(x), y, reduction="none")
    hand = (2.0 * ce[0] + 1.0 * ce[1] + 0.5 * ce[2] + 0.0 * ce[3] + 0.5 * ce[4]) / 5
    assert got.item() == pytest.approx(hand.item(), rel=1e-6)
    unweighted = create_method("supervised", method.encoder, num_classes=3,
                               class_counts=[3, 2, 1], loss="ce")
    unweighted.classifier.load_state_dict(method.classifier.state_dict())
    with torch.no_grad():
        assert unweighted((x, y))["loss"].item() == pytest.approx(ce.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="positions"):
        method((x, y))
    with pytest.raises(ValueError, match="non-negative"):
        create_method("supervised", method.encoder, num_classes=3, class_counts=[3, 2, 1],
                      sample_weights=[1.0, -0.5])
    assert "sample_weights" not in method.state_dict()  # derived from data, never checkpointed


def test_ldam_losses_train_a_cosine_classifier():
    enc = create_backbone("resnet_tiny", in_chans=3)
    ldam = create_method("supervised", enc, num_classes=3, class_counts=[3, 2, 1],
                         loss="ldam_drw")
    assert ldam.classifier_kind == "cosine" and not hasattr(ldam.classifier, "bias")
    logits = ldam.logits(torch.randn(4, 3, 16, 16))
    assert logits.abs().max() <= 1 + 1e-5
    ce = create_method("supervised", enc, num_classes=3, class_counts=[3, 2, 1], loss="ce")
    assert ce.classifier_kind == "linear" and isinstance(ce.classifier, nn.Linear)


# --- pseudo-labelling the pool with a teacher ---------------------------------------------------

def test_pool_pseudo_labels_come_from_the_teacher_only(tiny_idx, tmp_path, monkeypatch):
    ctx = _ctx(tiny_idx, tmp_path)
    rows, _ = ctx.manifest.rows("unlabeled")
    assert len(rows) == 30 and len(ctx.manifest.rows("labeled")[0]) == 15
    true = ctx.index.label[rows].copy()

    seen_labels = []
    real = st.teacher_logits

    def spy(teacher, loader, device):
        seen_labels.extend(y for batch in loader for y in batch[1].tolist())
        return real(teacher, loader, device)

    import ltscale.stages.selftrain as stage

    monkeypatch.setattr(stage, "teacher_logits", spy)
    pseudo = pseudo_label_pool(ctx, PixelTeacher(), threshold=0.5, batch_size=7)
    assert seen_labels == [-1] * 30  # the loader never carries a true label
    assert pseudo.rows.tolist() == rows.tolist()
    assert pseudo.predicted.tolist() == np.where(true == 2, 0, true).tolist()
    assert pseudo.labels.tolist() == np.where(true == 2, -1, true).tolist()  # p = 1/3 < 0.5
    metrics = st.pseudo_label_metrics(pseudo, ctx.manifest)
    assert metrics["selftrain/pseudo_accuracy"] == 1.0
    assert metrics["selftrain/teacher_pool_accuracy"] == pytest.approx((true != 2).mean())
    assert metrics["selftrain/kept"] == (true != 2).sum()

    # withhold D_U's clean labels and put wrong labels in the index for those rows
    hidden = dataclasses.replace(ctx.manifest, clean=np.where(
        ctx.manifest.mask("unlabeled"), -1, ctx.manifest.clean))
    ctx.manifest = hidden
    ctx.index.label[rows] = (true + 1) % 3
    again = pseudo_label_pool(ctx, PixelTeacher(), threshold=0.5, batch_size=7)
    assert (ctx.index.label[rows] != true).all()  # the tampering is in place
    np.testing.assert_array_equal(again.predicted, pseudo.predicted)
    np.testing.assert_array_equal(again.confidence, pseudo.confidence)
    metrics = st.pseudo_label_metrics(again, ctx.manifest)
    assert metrics["selftrain/clean_known"] == 0
    assert "selftrain/pseudo_accuracy" not in metrics  # unknown, not guessed from the index


def test_a_recipe_without_an_unlabeled_pool_is_refused_before_training(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path, multiple=0.0)
    with pytest.raises(ManifestError, match="manifest.unlabeled.multiple"):
        check_pool(ctx)
    ctx.recipe.selftrain.enabled = False
    check_pool(ctx)  # nothing to check when self-training is off


def test_selftrain_config_defaults_and_checks():
    r = recipe_from_dict({})
    s = r.selftrain
    assert (s.enabled, s.weight, s.threshold, s.init, s.teacher) == \
        (False, 1.0, 0.0, "scratch", "finetune")
    with pytest.raises(RecipeError, match="selftrain.threshold"):
        recipe_from_dict({"selftrain": {"threshold": 1.5}})
    with pytest.raises(RecipeError, match="selftrain.teacher"):
        recipe_from_dict({"selftrain": {"teacher": "oracle"}})


# --- the stage -----------------------------------------------------------------------------------

def test_stage_trains_a_student_and_ignores_tampered_true_labels(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path, threshold=0.5, weight=0.5, teacher="ce_scratch")
    out = run_selftrain(ctx, scratch_teacher(ctx, _scratch(PixelTeacher())))
    rows, _ = ctx.manifest.rows("unlabeled")
    true = ctx.index.label[rows].copy()
    saved = np.load(ctx.out / "selftrain" / "pseudo_labels.npz")
    assert saved["labels"].tolist() == np.where(true == 2, -1, true).tolist()
    s = out.train_set
    assert len(s.rows) == 15 + int((true != 2).sum())
    assert s.weights[s.pseudo].tolist() == [0.5] * int(s.pseudo.sum())
    assert out.logits.shape == (12, 3)
    assert out.targets.tolist() == (np.arange(12) % 3).tolist()
    assert out.history and np.isfinite(out.history[-1]["epoch/loss"])
    assert ctx.tracker.metrics["selftrain/pseudo_accuracy"] == 1.0
    assert "ω = 0.5" in out.name and "p ≥ 0.5" in out.name
    assert (ctx.out / "selftrain" / "head.pt").exists()

    # same run, in another folder, with D_U's true labels hidden and falsified: same student
    ctx2 = _ctx(tiny_idx, tmp_path, out="out2", threshold=0.5, weight=0.5,
                teacher="ce_scratch")
    ctx2.manifest = dataclasses.replace(ctx2.manifest, clean=np.where(
        ctx2.manifest.mask("unlabeled"), -1, ctx2.manifest.clean))
    ctx2.index.load_all()
    ctx2.index.label[rows] = (true + 1) % 3
    out2 = run_selftrain(ctx2, scratch_teacher(ctx2, _scratch(PixelTeacher())))
    np.testing.assert_array_equal(out2.train_set.labels, s.labels)
    torch.testing.assert_close(out2.logits, out.logits)
    assert "selftrain/pseudo_accuracy" not in ctx2.tracker.metrics


# --- the teacher the pipeline hands the stage ----------------------------------------------------

def test_finetuned_teacher_is_the_encoder_and_head_files(tiny_idx, tmp_path):
    ctx = _ctx(tiny_idx, tmp_path)
    encoder = new_encoder(ctx).eval()
    enc_path = save_encoder(tmp_path / "encoder.pt", encoder, ctx)
    head = new_head(encoder.feat_dim, 3, "linear", seed=1).eval()
    write_head(tmp_path / "head.pt", head, num_classes=3, mode="linear",
               classifier_stage="none", encoder=enc_path)
    result = FinetuneResult(head=tmp_path / "head.pt", logits=torch.zeros(0, 3),
                            targets=torch.zeros(0), history=[], mode="linear",
                            encoder=enc_path, seconds=2.0)
    cost = Budget(images=10, steps=2, seconds=3.0)
    teacher = finetuned_teacher(ctx, result, cost)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(teacher.model.eval().logits(x), head(encoder(x)))
    assert teacher.budget == cost and teacher.name == "simsiam + la_sl"  # the defaults
    with pytest.raises(RecipeError, match="selftrain.teacher=ce_scratch"):
        finetuned_teacher(ctx, dataclasses.replace(result, encoder=None))


def test_pipeline_trains_a_scratch_teacher_only_when_its_baseline_did_not_run(
        tiny_idx, tmp_path, monkeypatch):
    ctx = _ctx(tiny_idx, tmp_path, teacher="ce_scratch")
    trained = []

    def run_scratch(c):
        trained.append(c)
        return _scratch(PixelTeacher())

    monkeypatch.setattr(pipeline, "run_scratch", run_scratch)
    baseline = _scratch(PixelTeacher())
    assert pipeline._teacher(ctx, None, None, baseline).model is baseline.method
    assert trained == []
    teacher = pipeline._teacher(ctx, None, None, None)
    assert trained == [ctx] and isinstance(teacher.model, PixelTeacher)
    assert teacher.name == "scratch + ce"
