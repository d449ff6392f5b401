"""What `ltscale run` shares instead of recomputing: extra fine-tuning heads
(``finetune.extra_losses``) read one feature cache, and a sweep point whose pretraining reads no
labels reuses an earlier point's encoder of the same images. Both must give exactly what the
unshared runs give."""

import logging

import pytest
import torch

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import RecipeError
from ltscale.pipeline import run_pipeline
from ltscale.stages.context import make_context
from ltscale.stages.pretrain import label_free_key
from ltscale.track import NullTracker
from tests.conftest import LogLines, tiny_pipeline_recipe


def _recipe(tiny_idx, tmp_path, out, **changes):
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / out, tmp_path / "shards")
    raw["finetune"]["mode"] = "proj_head"
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return recipe_from_dict(raw)


def _run(recipe, shared=None):
    lines = LogLines()
    logger = logging.getLogger("ltscale")
    logger.addHandler(lines)
    try:
        summary = run_pipeline(recipe, NullTracker(), progress=False, shared=shared)
    finally:
        logger.removeHandler(lines)
    return summary, lines.lines


def test_extra_heads_share_the_cache_and_equal_their_own_runs(tiny_idx, tmp_path):
    summary, _ = _run(_recipe(tiny_idx, tmp_path, "extra", finetune__extra_losses=["ce", "la"]))
    out = tmp_path / "extra"
    assert list(summary["results"]) == ["simsiam + la_sl", "simsiam + ce", "simsiam + la"]
    for folder in ("finetune", "finetune_ce", "finetune_la"):
        assert (out / folder / "head.pt").exists()
    assert not (out / "finetune_ce" / "features").exists()  # encoded once, in finetune/
    heads = {f: torch.load(out / f / "head.pt", weights_only=True)["state_dict"]
             for f in ("finetune", "finetune_ce")}
    assert any(not torch.equal(heads["finetune"][k], heads["finetune_ce"][k])
               for k in heads["finetune"])  # another loss trained another head
    # the CE head is exactly the head a pipeline with finetune.loss.name=ce trains
    alone, _ = _run(_recipe(tiny_idx, tmp_path, "alone", finetune__loss={"name": "ce"}))
    assert alone["results"]["simsiam + ce"] == summary["results"]["simsiam + ce"]


def test_extra_losses_are_checked():
    base = {"finetune": {"mode": "proj_head", "loss": {"name": "la_sl"}}}
    with pytest.raises(RecipeError, match="repeats a loss"):
        recipe_from_dict(base | {"finetune": base["finetune"] | {"extra_losses": ["la_sl"]}})
    with pytest.raises(RecipeError, match="sweep finetune.loss.name instead"):
        recipe_from_dict({"finetune": {"mode": "full", "extra_losses": ["ce"]}})
    with pytest.raises(RecipeError, match="loss ldam trains a cosine one"):
        recipe_from_dict({"finetune": {"classifier_stage": "tau_norm", "loss": {"name": "ce"},
                                       "extra_losses": ["ldam"]}})
    with pytest.raises(RecipeError, match="extra_losses"):
        recipe_from_dict({"finetune": {"extra_losses": ["nope"]}})


def test_a_noise_sweep_pretrains_once_and_the_reuse_is_exact(tiny_idx, tmp_path):
    shared = {}
    _run(_recipe(tiny_idx, tmp_path, "p0", manifest__noise="sym:0.0"), shared)
    reused, lines = _run(_recipe(tiny_idx, tmp_path, "p1"), shared)
    assert any("reusing the encoder" in line and str(tmp_path / "p0") in line for line in lines)
    assert not (tmp_path / "p1" / "pretrain").exists()  # no second pretraining
    assert len(shared) == 1
    # the same point pretrained on its own gives the same numbers
    own, own_lines = _run(_recipe(tiny_idx, tmp_path, "own"), None)
    assert not any("reusing" in line for line in own_lines)
    assert own["results"] == reused["results"]
    # the kNN monitor's bank holds each point's own observed labels: rescored, not copied
    knn = [[line.split("kNN top-1 ")[1] for line in out if "kNN top-1" in line]
           for out in (lines, own_lines)]
    assert knn[0] == knn[1] and len(knn[0]) == 1


def _key(tiny_idx, tmp_path, **changes):
    recipe = _recipe(tiny_idx, tmp_path, "k", **changes)
    return label_free_key(make_context(recipe, NullTracker(), progress=False))


def test_the_reuse_key_ignores_labels_only(tiny_idx, tmp_path):
    base = _key(tiny_idx, tmp_path)
    assert base is not None
    assert _key(tiny_idx, tmp_path, manifest__noise="sym:0.8") == base
    assert _key(tiny_idx, tmp_path, pretrain__workers=1, pretrain__knn={"k": 3}) == base
    for changes in ({"seed": 1}, {"manifest__imbalance": "exp:2"},
                    {"pretrain__epochs": 2}, {"manifest__seed": 5}):
        assert _key(tiny_idx, tmp_path, **changes) != base, changes
    # pretraining that reads labels is never shared
    assert _key(tiny_idx, tmp_path, pretrain__method={"name": "supcon"}) is None
    assert _key(tiny_idx, tmp_path, pretrain__balance="class") is None
    assert _key(tiny_idx, tmp_path, pretrain__online_probe=True) is None


def test_scratch_networks_per_loss_are_each_the_run_of_that_loss(tiny_idx, tmp_path):
    """``baselines.ce_scratch.extra_losses``: one from-scratch network per loss (seed 000's
    single-stage LA / SL / LA+SL), each in its own folder, each equal to a pipeline whose
    scratch loss is that one."""
    scratch = {"enabled": True, "epochs": 1, "batch_size": 8, "loss": {"name": "ce"},
               "extra_losses": ["la", "la_sl"]}
    summary, _ = _run(_recipe(tiny_idx, tmp_path, "fair", baselines__ce_scratch=scratch))
    out = tmp_path / "fair"
    assert [m for m in summary["results"] if m.startswith("scratch")] == [
        "scratch + ce", "scratch + la", "scratch + la_sl"]
    for folder in ("ce_scratch", "scratch_la", "scratch_la_sl"):
        assert (out / folder / "encoder.pt").exists()
    assert summary["results"]["scratch + la"] != summary["results"]["scratch + ce"]
    alone = dict(scratch, loss={"name": "la"}, extra_losses=[])
    single, _ = _run(_recipe(tiny_idx, tmp_path, "alone", baselines__ce_scratch=alone))
    assert single["results"]["scratch + la"] == summary["results"]["scratch + la"]
    with pytest.raises(RecipeError, match="repeats a loss"):
        recipe_from_dict({"baselines": {"ce_scratch": {"loss": {"name": "la"},
                                                       "extra_losses": ["la"]}}})
