"""Multi-stage pretraining (`pretrain.stages`): settings inherited from `pretrain`, each stage
starting from the previous one's encoder, its own folder, checkpoints and resume."""

import pytest
import torch

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import RecipeError
from ltscale.stages import pretrain as pre
from ltscale.stages.context import make_context

STAGES = [{"name": "first", "method": {"name": "simclr", "proj_dim": 16, "out_dim": 8}},
          {"name": "second", "method": {"name": "simsiam", "proj_dim": 16, "pred_dim": 8},
           "epochs": 2, "optim": {"lr": 0.01, "warmup_epochs": 0}}]


def _recipe(tmp_path, tiny_idx, stages=STAGES, **pretrain):
    return recipe_from_dict({
        "output_dir": str(tmp_path / "out"), "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(tiny_idx)},
                 "shards": str(tmp_path / "shards"), "image_size": 8, "channels": 1,
                 "mean": [0.5], "std": [0.25]},
        "manifest": {"imbalance": "none", "noise": "none"},
        "pretrain": {"backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 16,
                     "workers": 0, "knn": {"enabled": False}, "stages": stages, **pretrain},
        "finetune": {"mode": "linear"}})


def test_stages_inherit_unset_settings_and_override_set_ones(tmp_path, tiny_idx):
    p = _recipe(tmp_path, tiny_idx, max_steps_per_epoch=3).pretrain
    first, second = p.resolved_stages()
    # no optimizer set: the first stage's method's own (SimCLR's LARS)
    assert (first.epochs, first.optim.name, first.optim.lr, first.batch_size) == \
        (1, "lars", 0.3, 16)
    # set fields replace the method's (SimSiam: SGD, weight decay 1e-4), the rest stay its own
    assert (second.epochs, second.optim.lr, second.max_steps_per_epoch) == (2, 0.01, 3)
    assert (second.optim.name, second.optim.weight_decay, second.optim.warmup_epochs) == \
        ("sgd", 1e-4, 0)
    assert p.final_method.name == "simsiam"


def test_one_stage_without_stages_is_named_pretrain(tmp_path, tiny_idx):
    (only,) = _recipe(tmp_path, tiny_idx, stages=[]).pretrain.resolved_stages()
    assert only.name == "pretrain" and only.method.name == "simsiam"


@pytest.mark.parametrize("bad, message", [
    ({"method": {"name": "byol"}}, "either pretrain.method"),
    ({"stages": [STAGES[0], STAGES[0]]}, "must be unique"),
    ({"stages": [{"name": "../up", "method": {"name": "simclr"}}]}, "stages.0.name"),
])
def test_bad_stage_lists_are_refused(tmp_path, tiny_idx, bad, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tmp_path, tiny_idx, **bad)


def test_each_stage_starts_from_the_previous_encoder_and_resumes(tmp_path, tiny_idx,
                                                                 monkeypatch, ltscale_log):
    ctx = make_context(_recipe(tmp_path, tiny_idx), progress=False)
    handed = []
    real = pre._start_from

    def spy(ctx, method, previous, stage):
        real(ctx, method, previous, stage)
        handed.append((stage, {k: v.clone() for k, v in method.encoder.state_dict().items()}))

    monkeypatch.setattr(pre, "_start_from", spy)
    result = pre.run_pretrain(ctx)
    out = tmp_path / "out" / "pretrain"
    first = torch.load(out / "first" / "encoder.pt", weights_only=True)["state_dict"]
    # stage two began from exactly the encoder stage one saved, then moved away from it
    (stage, start), = handed
    assert stage == "second"
    assert all(torch.equal(start[k], first[k]) for k in first)
    final = result.method.encoder.state_dict()
    assert any(not torch.equal(final[k], first[k]) for k in first if first[k].is_floating_point())
    assert result.encoder == out / "second" / "encoder.pt"
    assert len(result.history) == 2  # stage two's epochs
    assert (out / "first").is_dir() and pre.latest_checkpoint(out / "second" / "checkpoint.pt")

    # a second run finds both stages done: each resumes its own last checkpoint, same encoder
    ctx = make_context(_recipe(tmp_path, tiny_idx), progress=False)
    ltscale_log.clear()
    again = pre.run_pretrain(ctx)
    resumed = [line for line in ltscale_log if "resuming from" in line]
    assert [line.split(":")[0] for line in resumed] == ["pretrain/first", "pretrain/second"]
    assert all(torch.equal(again.method.encoder.state_dict()[k], final[k]) for k in final)
