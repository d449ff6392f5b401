"""The real from-scratch stage (``run_scratch``: method, param groups, optimizer, schedule, loss,
engine) trains exactly as a hand-written loop given the same batches: torch's SGD with Nesterov,
``OneCycleLR``, weight decay on every parameter and the logit-adjusted cross-entropy with the
observed-label prior. What the stage's loader yields is recorded and replayed, so any residual
difference against the plain script of ``ltscale bench baseline`` can only come from the data
stream (its random order and views), not from how ltscale trains."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import ltscale.stages.pretrain as pretrain_stage
from ltscale.config.loading import recipe_from_dict
from ltscale.stages.context import make_context
from tests.conftest import tiny_pipeline_recipe


def test_run_scratch_equals_a_plain_loop_on_the_same_batches(tiny_idx, tmp_path, monkeypatch):
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "out", tmp_path / "shards")
    raw["baselines"]["ce_scratch"] = {"enabled": True, "epochs": 3, "batch_size": 8,
                                      "loss": {"name": "la"}, "backbone": {"name": "resnet_tiny"}}
    ctx = make_context(recipe_from_dict(raw), progress=False)
    seen = {}
    real_fit = pretrain_stage.fit

    class Recording:
        def __init__(self, loader):
            self._loader, self.batches = loader, []

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def __len__(self):
            return len(self._loader)

        def __iter__(self):
            for x, y, pos in self._loader:
                self.batches.append((x.clone(), y.clone()))
                yield x, y, pos

    def recording_fit(method, loader, sampler, optimizer, cfg, *args, **kwargs):
        seen["init"], seen["loader"] = copy.deepcopy(method), Recording(loader)
        seen["lr"] = optimizer.param_groups[0]["base_lr"]
        return real_fit(method, seen["loader"], sampler, optimizer, cfg, *args, **kwargs)

    monkeypatch.setattr(pretrain_stage, "fit", recording_fit)
    trained = pretrain_stage.run_scratch(ctx).method

    s = ctx.recipe.baselines.ce_scratch
    assert s.optim.schedule == "onecycle" and s.optim.nesterov and s.optim.decay_norm_bias
    ref, batches = seen["init"], seen["loader"].batches
    assert len(batches) == 3 * (len(ctx.manifest.rows("labeled")[0]) // 8)  # the tail dropped
    counts = torch.as_tensor(ctx.manifest.class_counts(), dtype=torch.float32)
    log_prior = (counts / counts.sum()).log()  # the observed labels' prior, τ = 1
    opt = torch.optim.SGD(ref.parameters(), lr=seen["lr"], momentum=s.optim.momentum,
                          nesterov=True, weight_decay=s.optim.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=seen["lr"], total_steps=len(batches),
                                                pct_start=s.optim.warmup_fraction)
    ref.train()
    for x, y in batches:
        loss = F.cross_entropy(ref.classifier(ref.encoder(x)) + log_prior, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for (name, p), q in zip(trained.state_dict().items(), ref.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(p, q), name
