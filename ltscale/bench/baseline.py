"""`ltscale bench baseline`: ltscale's from-scratch network against a plain PyTorch script
(``bench/plain.py``) on the same manifest, at the same settings, and against the plain script's
own defaults.

For each manifest draw (``manifest.seed``), three networks are trained and tested on the recipe's
data: ltscale's ``baselines.ce_scratch`` (its first loss, the real stage: loaders, engine,
evaluation), the plain script with the settings translated from that section (``same``), and the
plain script as a user would write it (``plain``: ``PlainSettings()``). Reported: balanced
top-1 of each (the test split is balanced, so top-1), training images/s and seconds, and the mean
± std over the draws; the gap ltscale − same is the engine's, ltscale − plain the defaults'.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

import torch

from ltscale.bench.plain import PlainSettings, load_data, train_and_test
from ltscale.errors import RecipeError


def same_settings(ctx, epochs: int) -> PlainSettings:
    """The plain script's settings equal to the recipe's ``baselines.ce_scratch``."""
    s = ctx.recipe.baselines.ce_scratch
    o, net = s.optim, s.backbone or ctx.recipe.pretrain.backbone
    if s.loss.name not in ("ce", "la") or (s.loss.name == "la" and s.loss.tau != 1.0):
        raise RecipeError(f"bench baseline: the plain script trains ce or la (τ = 1), not "
                          f"{s.loss.name}; set baselines.ce_scratch.loss.name")
    if o.name != "sgd" or s.augment.preset != "supervised_cifar" or s.balance != "instance":
        raise RecipeError("bench baseline: the plain script trains with SGD, instance sampling "
                          "and the supervised_cifar views; the recipe's ce_scratch differs")
    if net.cifar_stem or not net.name.startswith("resnet"):
        raise RecipeError("bench baseline: the plain script builds torchvision ResNets with their "
                          f"own stem; the recipe's network is {net.name} "
                          f"(cifar_stem {net.cifar_stem})")
    lr = o.lr * (s.batch_size / 256 if o.scale_lr else 1.0)
    padding = s.augment.padding if s.augment.padding is not None else 4
    return PlainSettings(network=net.name, epochs=epochs, batch_size=s.batch_size, lr=lr,
                         momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                         decay_norm_bias=o.decay_norm_bias, schedule=o.schedule,
                         warmup=o.warmup_for(epochs) / epochs,
                         padding=padding, flip=s.augment.flip is not False,
                         loss=s.loss.name, drop_last=True, seed=ctx.recipe.seed)


def _ltscale(ctx) -> dict:
    from ltscale.stages.finetune import predict_images
    from ltscale.stages.pretrain import run_scratch

    t = time.perf_counter()
    trained = run_scratch(ctx)
    seconds = time.perf_counter() - t
    logits, targets = predict_images(ctx, trained.method)
    return {"top1": float((logits.argmax(1) == targets).float().mean()),
            "images_per_s": trained.budget.images / max(seconds, 1e-9), "seconds": seconds}


def bench_baseline(recipe_path: str, overrides: list[str], draws: tuple[int, ...],
                   threads: int | None = None, log=print) -> dict:
    from ltscale.config.loading import load_recipe

    if threads:
        torch.set_num_threads(threads)
    rows = []
    for d in draws:
        recipe = load_recipe(recipe_path, [*overrides, f"manifest.seed={d}"])
        with tempfile.TemporaryDirectory(prefix="ltscale-bench-baseline-") as tmp:
            recipe.output_dir = tmp  # a fresh run: no checkpoint of an earlier one is resumed
            rows.append(_draw(recipe, d, log))
    same, plain = rows[-1].pop("settings")
    for r in rows:
        r.pop("settings", None)
    result = {"recipe": recipe_path, "overrides": overrides, "draws": list(draws), "rows": rows,
              "settings": {"same": dataclasses.asdict(same), "plain": dataclasses.asdict(plain)}}
    result["summary"] = {k: _mean_std([r[k]["top1"] for r in rows])
                         for k in ("ltscale", "same", "plain")}
    log(table(result))
    return result


def _draw(recipe, d: int, log) -> dict:
    """The three networks on manifest draw ``d``."""
    from ltscale.stages.budget import scratch_epochs
    from ltscale.stages.context import make_context
    from ltscale.stages.loaders import test_selection

    ctx = make_context(recipe, None, progress=False)
    epochs = scratch_epochs(ctx)  # the recipe's epochs, or its matched budget's
    _, test_rows, _ = test_selection(ctx)
    data = load_data(recipe.data.shards, ctx.manifest, test_rows, recipe.data.channels,
                     recipe.data.mean, recipe.data.std)
    same = same_settings(ctx, epochs)
    plain = dataclasses.replace(PlainSettings(), network=same.network, epochs=epochs,
                                loss=same.loss, seed=recipe.seed)
    row = {"draw": d, "manifest": ctx.manifest.hash, "ltscale": _ltscale(ctx),
           "same": train_and_test(data, same), "plain": train_and_test(data, plain)}
    log(f"draw {d}: " + ", ".join(f"{k} {100 * row[k]['top1']:.2f}"
                                  for k in ("ltscale", "same", "plain")))
    return row | {"settings": (same, plain)}


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def table(result: dict) -> str:
    names = {"ltscale": "ltscale ce_scratch (the recipe)", "same": "plain script, same settings",
             "plain": "plain script, its own defaults"}
    lines = ["| network | " + " | ".join(f"draw {r['draw']}" for r in result["rows"])
             + " | mean ± std | images/s |", "|---" * (len(result["rows"]) + 3) + "|"]
    for k, name in names.items():
        s = result["summary"][k]
        ips = statistics.fmean(r[k]["images_per_s"] for r in result["rows"])
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]['top1']:.2f}"
                                                  for r in result["rows"])
                     + f" | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | {ips:.0f} |")
    return "\n".join(lines)
