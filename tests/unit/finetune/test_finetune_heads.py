"""Fine-tuning heads without data: τ-normalisation, LWS, cRT sampling, the trainer, rebuilding."""

import numpy as np
import pytest
import torch
from torch import nn

from ltscale.finetune.trainer import predict, superloss_confidence, train_head, transform
from ltscale.finetune.two_stage import (
    apply_classifier_stage,
    classifier_retraining,
    learnable_weight_scaling,
    tau_normalize,
)
from ltscale.losses import classification_loss
from ltscale.models.classifier import Head, build_head, head_spec, projector_layer


def _toy(counts=(40, 40, 40), dim=6, seed=0, versions=1):
    """Linearly separable features: class c is centred on 3·e_c."""
    g = torch.Generator().manual_seed(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    centres = torch.zeros(len(counts), dim)
    centres[torch.arange(len(counts)), torch.arange(len(counts))] = 3.0
    x = centres[labels] + 0.5 * torch.randn(versions, len(labels), dim, generator=g)
    return x, labels


def _linear_head(dim=6, classes=3, **kw):
    return Head(head_spec(dim, classes, **kw))


def test_tau_norm_matches_a_hand_computation():
    head = _linear_head(4, 3, standardize=False)
    w = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 1.0]])
    with torch.no_grad():
        head.classifier.weight.copy_(w)
        head.classifier.bias.copy_(torch.tensor([5.0, -1.0, 2.0]))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, -1.0, 0.5]])
    # norms 5, 1, 3; τ = 1: unit rows; τ = 0.5: rows / sqrt(norm); the bias is dropped
    for tau, scale in ((1.0, [5.0, 1.0, 3.0]), (0.5, [5 ** 0.5, 1.0, 3 ** 0.5])):
        expected = x @ (w / torch.tensor(scale)[:, None]).T
        normed = tau_normalize(head, tau)
        assert torch.allclose(normed(x), expected, atol=1e-6)
        assert normed.spec["classifier"] == {"kind": "tau_norm", "bias": False, "tau": tau}
    assert torch.equal(head.classifier.weight, w)  # the trained head itself is left alone


def test_lws_learns_only_the_scales():
    x, y = _toy(counts=(60, 15, 5))
    torch.manual_seed(0)
    head, _ = train_head(_linear_head(standardize=False), x, y,
                         loss_fn=classification_loss("ce", [60, 15, 5]), epochs=3,
                         batch_size=16, lr=0.01, progress=False)
    w, b = head.classifier.weight.detach().clone(), head.classifier.bias.detach().clone()
    scaled, history = learnable_weight_scaling(head, x, y, loss_fn=classification_loss(
        "ce", [60, 15, 5]), epochs=5, batch_size=16, lr=0.05, progress=False)
    assert [n for n, p in scaled.named_parameters() if p.requires_grad] == ["classifier.scales"]
    assert torch.equal(scaled.classifier.weight, w) and torch.equal(scaled.classifier.bias, b)
    assert not torch.allclose(scaled.classifier.scales, torch.ones(3))
    z = x[0]
    assert torch.allclose(scaled(z), (z @ w.T + b) * scaled.classifier.scales, atol=1e-5)
    assert len(history) == 5


def test_crt_draws_classes_equally_and_reinitialises_the_classifier():
    counts = (60, 20, 5)
    x, y = _toy(counts=counts)
    head, first = train_head(_linear_head(standardize=False), x, y,
                             loss_fn=classification_loss("ce", list(counts)), epochs=2,
                             batch_size=16, lr=0.01, progress=False)
    assert first[0]["seen"] == list(counts)  # instance sampling: each sample once
    crt, history = classifier_retraining(head, x, y, loss_fn=classification_loss(
        "ce", list(counts)), epochs=3, batch_size=16, lr=0.01, progress=False)
    for record in history:  # 85 draws per epoch spread evenly over 3 classes
        assert sorted(record["seen"]) == [28, 28, 29]
    assert not torch.equal(crt.classifier.weight, head.classifier.weight)
    assert crt.spec["classifier"]["kind"] == "linear"


@pytest.mark.parametrize("balance", ["instance", "class", "sqrt", "progressive"])
def test_trainer_improves_accuracy_with_every_balance(balance):
    x, y = _toy(counts=(50, 20, 10), versions=3)  # three cached versions per sample
    torch.manual_seed(0)
    head, history = train_head(_linear_head(), x, y, loss_fn=classification_loss(
        "ce", [50, 20, 10]), epochs=15, batch_size=16, lr=0.03, balance=balance,
        progress=False)
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    assert (predict(head, x).argmax(1).numpy() == y).mean() > 0.9


def test_projector_head_trains_its_projector_and_classifier():
    x, y = _toy()
    torch.manual_seed(0)
    head = Head(head_spec(6, 3, projector_dims=[6, 8], standardize=False))
    before = head.projector[0].weight.detach().clone()
    head, history = train_head(head, x, y, loss_fn=classification_loss("ce", [40, 40, 40]),
                               epochs=10, batch_size=16, lr=0.01, progress=False)
    assert not torch.equal(head.projector[0].weight, before)
    assert history[-1]["accuracy"] > max(0.9, history[0]["accuracy"])
    assert (predict(head, x).argmax(1).numpy() == y).mean() > 0.9


def test_superloss_confidence_is_per_sample_or_none():
    x, y = _toy()
    head = _linear_head()
    sigma = superloss_confidence(head, x, y, classification_loss("la_sl", [40, 40, 40]))
    assert sigma.shape == (120,) and np.isfinite(sigma).all() and (sigma > 0).all()
    assert superloss_confidence(head, x, y, classification_loss("ce", [40, 40, 40])) is None


@pytest.mark.parametrize("stage", ["none", "crt", "tau_norm", "lws"])
@pytest.mark.parametrize("projector", [None, [6, 8]])
def test_every_head_kind_rebuilds_from_its_spec(stage, projector):
    x, y = _toy()
    head = Head(head_spec(6, 3, projector_dims=projector, standardize=projector is None))
    head.eval()
    z = x if projector is None else transform(head.projector, x)  # what the classifier sees
    out, _ = apply_classifier_stage(stage, head, z, y, loss_fn=classification_loss(
        "ce", [40, 40, 40]), epochs=1, tau=0.7, batch_size=32, lr=0.01, progress=False)
    saved = torch.load(_roundtrip(out), weights_only=True)
    rebuilt = build_head(saved["spec"], saved["state_dict"]).eval()
    z = torch.randn(5, 6)
    assert torch.allclose(rebuilt(z), out.eval()(z), atol=1e-6)


def _roundtrip(head):
    import io

    buf = io.BytesIO()
    torch.save({"spec": head.spec, "state_dict": head.state_dict()}, buf)
    buf.seek(0)
    return buf


def test_projector_layer_keys_match_the_pretrained_projector():
    from ltscale.models.heads import mlp

    full = mlp([6, 8, 8], last_bn=True, last_bn_affine=False)
    layer = projector_layer(6, 8)
    state = {k: v for k, v in full.state_dict().items() if k.split(".")[0] in ("0", "1")}
    layer.load_state_dict(state)  # strict: same names and shapes
    assert isinstance(layer[2], nn.ReLU)


def test_ldam_trains_a_cosine_classifier_and_refuses_weight_rescaling_stages():
    from ltscale.config.loading import recipe_from_dict
    from ltscale.core.errors import RecipeError
    from ltscale.models.classifier import CosineLinear, Head, head_spec

    head = Head(head_spec(4, 3, kind="cosine", bias=False))
    assert isinstance(head.classifier, CosineLinear)
    logits = head(torch.randn(5, 4) * 100)
    assert logits.abs().max() <= 1 + 1e-6  # cosines, whatever the feature scale
    with pytest.raises(RecipeError, match="needs a linear classifier"):
        recipe_from_dict({"finetune": {"loss": {"name": "ldam_drw"},
                                       "classifier_stage": "tau_norm"}})
