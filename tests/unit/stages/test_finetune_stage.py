"""The fine-tuning stage: every mode, the classifier stages, head.pt, encoder-file checks."""

import numpy as np
import pytest
import torch

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import CheckpointError
from ltscale.engine.checkpoint import load_checkpoint
from ltscale.engine.features import encode
from ltscale.methods import create_method
from ltscale.models.files import head_from_file, load_encoder
from ltscale.stages.context import make_context
from ltscale.stages.finetune import run_finetune
from ltscale.stages.loaders import test_loader as balanced_test_loader
from ltscale.stages.networks import new_encoder, save_encoder
from tests.conftest import write_idx


@pytest.fixture
def separable_idx(tmp_path):
    """3 classes of 8×8 noise images told apart by their brightness (which survives crops)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "sep-idx"
    root.mkdir()
    for split, n in (("train", 90), ("t10k", 30)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 100, size=(n, 8, 8)) + 70 * labels[:, None, None]
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def _ctx(root, tmp_path, loss="ce", **finetune):
    recipe = recipe_from_dict({
        "output_dir": str(tmp_path / "out"), "device": "cpu", "seed": 0,
        "data": {"source": {"kind": "idx", "path": str(root)}, "shards": str(tmp_path / "shards"),
                 "image_size": 8, "channels": 1, "mean": [0.3], "std": [0.3]},
        "manifest": {"imbalance": "none", "noise": "none"},
        "pretrain": {"backbone": {"name": "resnet_tiny"},
                     "method": {"name": "simsiam", "proj_dim": 32, "pred_dim": 8}},
        "finetune": {"epochs": 15, "batch_size": 16, "lr": 0.01, "workers": 0,
                     "loss": {"name": loss}, **finetune}})
    return make_context(recipe, progress=False)


def _encoder_file(ctx, path, projector=True):
    """An untrained SimSiam's encoder (+ projector) saved as `ltscale pretrain` saves it."""
    method = create_method("simsiam", new_encoder(ctx), proj_dim=32, pred_dim=8)
    return save_encoder(path, method if projector else method.encoder, ctx)


MODES = ["linear", "proj_head", "last_fc", "partial", "full"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_improves_training_accuracy(separable_idx, tmp_path, mode):
    ctx = _ctx(separable_idx, tmp_path, mode=mode, trainable_stages=2)
    path = _encoder_file(ctx, tmp_path / "encoder.pt")
    result = run_finetune(ctx, path, "ft")
    acc = [r["accuracy"] for r in result.history]
    assert acc[-1] > acc[0] and acc[-1] >= 0.8, acc
    assert (result.logits.argmax(1) == result.targets).float().mean() > 0.5
    saved = load_checkpoint(result.head)
    assert saved["mode"] == mode and saved["num_classes"] == 3
    if mode in ("partial", "full"):  # the fine-tuned encoder is written beside the head
        assert saved["encoder"] == str((ctx.out / "ft" / "encoder.pt").resolve())
    else:
        assert saved["encoder"] == str(path.resolve())


@pytest.mark.parametrize("mode,stage", [("linear", "crt"), ("proj_head", "tau_norm"),
                                        ("proj_head", "lws"), ("last_fc", "crt"),
                                        ("full", "tau_norm")])
def test_saved_head_gives_the_stage_logits_on_encoder_features(separable_idx, tmp_path, mode,
                                                                stage):
    ctx = _ctx(separable_idx, tmp_path, mode=mode, classifier_stage=stage, crt_epochs=3)
    path = _encoder_file(ctx, tmp_path / "encoder.pt")
    result = run_finetune(ctx, path, "ft")
    saved = load_checkpoint(result.head)
    assert saved["classifier_stage"] == stage
    assert saved["spec"]["classifier"]["kind"] == {"crt": "linear"}.get(stage, stage)
    assert (saved["spec"]["projector"] is not None) == (mode in ("proj_head", "last_fc"))
    # what `ltscale eval` does: the named encoder's features through the rebuilt head
    encoder = load_encoder(saved["encoder"])
    feats, targets = encode(encoder, balanced_test_loader(ctx), ctx.device, progress=False)
    with torch.no_grad():
        logits = head_from_file(result.head, num_classes=3)(feats)
    assert torch.equal(targets, result.targets)
    torch.testing.assert_close(logits, result.logits, atol=2e-2, rtol=1e-2)  # fp16 cache
    assert (logits.argmax(1) == result.logits.argmax(1)).float().mean() > 0.9


def test_partial_trains_only_the_last_stages(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path, mode="partial", trainable_stages=1, epochs=2)
    path = _encoder_file(ctx, tmp_path / "encoder.pt")
    before = load_checkpoint(path)["state_dict"]
    run_finetune(ctx, path, "ft")
    after = load_checkpoint(ctx.out / "ft" / "encoder.pt")["state_dict"]
    changed = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("layers") else
               k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    # resnet_tiny: stem (conv1, bn1) + 3 stages of one block (layers.0, .1, .2): only .2 moves,
    # frozen BatchNorm statistics included
    assert changed == {"layers.2"}


def test_confidence_is_aligned_with_the_labeled_rows(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path, loss="la_sl", epochs=2)
    result = run_finetune(ctx, _encoder_file(ctx, tmp_path / "e.pt"), "ft")
    sigma = result.confidence
    assert sigma.shape == (len(ctx.manifest.rows("labeled")[0]),) and np.isfinite(sigma).all()
    np.testing.assert_array_equal(np.load(ctx.out / "ft" / "confidence.npy"), sigma)
    ctx.recipe.finetune.loss.name = "ce"
    assert run_finetune(ctx, tmp_path / "e.pt", "ft2").confidence is None


def test_random_encoder_module_gets_a_fresh_projector(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path, mode="proj_head", epochs=2)
    result = run_finetune(ctx, new_encoder(ctx), "baseline")  # the pipeline's baseline call
    assert load_checkpoint(result.head)["encoder"] is None


def test_projector_modes_need_an_encoder_file_with_a_projector(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path, mode="proj_head")
    path = _encoder_file(ctx, tmp_path / "bare.pt", projector=False)
    with pytest.raises(CheckpointError, match=r"bare.pt has no projector.*finetune.mode=linear"):
        run_finetune(ctx, path, "ft")


def test_load_encoder_refuses_another_backbone_or_channel_count(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path)
    path = _encoder_file(ctx, tmp_path / "encoder.pt")
    assert load_encoder(path, "resnet_tiny", 1).feat_dim == 32
    with pytest.raises(CheckpointError, match=r"resnet_tiny encoder.*pretrain.backbone.name is "
                                              r"cifar_resnet20"):
        load_encoder(path, expected_backbone="cifar_resnet20")
    with pytest.raises(CheckpointError, match=r"1-channel images.*data.channels is 3"):
        load_encoder(path, in_chans=3)
    ctx.recipe.pretrain.backbone.name = "cifar_resnet8"
    with pytest.raises(CheckpointError, match=r"resnet_tiny.*cifar_resnet8"):
        run_finetune(ctx, path, "ft")


def test_head_for_another_class_count_is_refused(separable_idx, tmp_path):
    ctx = _ctx(separable_idx, tmp_path, epochs=1)
    result = run_finetune(ctx, _encoder_file(ctx, tmp_path / "e.pt"), "ft")
    assert head_from_file(result.head, 3)(torch.zeros(2, 32)).shape == (2, 3)
    with pytest.raises(CheckpointError, match=r"head for 3 classes but the dataset has 10"):
        head_from_file(result.head, num_classes=10)


def test_legacy_linear_head_files_still_load(tmp_path):
    path = tmp_path / "head.pt"
    torch.save({"state_dict": torch.nn.Linear(4, 3).state_dict(), "num_classes": 3,
                "encoder": "x"}, path)
    assert head_from_file(path, 3)(torch.zeros(1, 4)).shape == (1, 3)


def test_per_class_metrics_are_logged_up_to_the_class_cap(separable_idx, tmp_path):
    """``eval.class_metrics_max``: test/class_<c> for every class up to the cap, none above it
    (an iNat-size run would otherwise give MLflow 8,142 metrics a run to load in `compare`)."""
    from ltscale.stages.evaluate import evaluate_logits
    from ltscale.track import NullTracker

    class Recording(NullTracker):
        def __init__(self):
            self.logged = {}

        def log_metrics(self, metrics, step=None):
            self.logged |= metrics

    ctx = _ctx(separable_idx, tmp_path)
    logits, targets = torch.eye(3)[torch.arange(30) % 3], torch.arange(30) % 3
    for cap, expected in ((3, {"test/class_0", "test/class_1", "test/class_2"}), (2, set())):
        ctx.recipe.eval.class_metrics_max = cap
        ctx.tracker = Recording()
        metrics = evaluate_logits(ctx, logits, targets)
        assert {k for k in ctx.tracker.logged if k.startswith("test/class_")} == expected
        assert ctx.tracker.logged["test/top1"] == 1.0 and metrics["per_class"] == [1.0] * 3
