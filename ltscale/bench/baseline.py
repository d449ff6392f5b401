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
from ltscale.core.errors import RecipeError


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
    from ltscale.stages.networks import predict_images
    from ltscale.stages.pretrain import run_scratch

    t = time.perf_counter()
    trained = run_scratch(ctx)
    seconds = time.perf_counter() - t
    logits, targets = predict_images(ctx, trained.method)
    return {"top1": float((logits.argmax(1) == targets).float().mean()),
            "images_per_s": trained.budget.images / max(seconds, 1e-9), "seconds": seconds}


NETWORKS = ("ltscale", "same", "plain")


def bench_baseline(recipe_path: str, overrides: list[str], draws: tuple[int, ...],
                   threads: int | None = None, log=print, seeds: tuple[int, ...] | None = None,
                   networks: tuple[str, ...] = NETWORKS) -> dict:
    """Every network of ``networks`` on each manifest draw of ``draws``, once per training seed
    of ``seeds`` (default: the recipe's ``seed``). A run pairs the networks on one draw and
    seed; the summary gives each network's mean ± std over the runs and the paired difference
    ltscale − same with its standard error (the engine's gap, with its uncertainty)."""
    from ltscale.config.loading import load_recipe

    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown or not networks:
        raise RecipeError(f"bench baseline: unknown network(s) {', '.join(unknown) or '(none)'}; "
                          f"choose from {', '.join(NETWORKS)}")
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for d in draws:
        for seed in seeds if seeds is not None else (None,):
            extra = [f"manifest.seed={d}"] + ([] if seed is None else [f"seed={seed}"])
            recipe = load_recipe(recipe_path, [*overrides, *extra])
            with tempfile.TemporaryDirectory(prefix="ltscale-bench-baseline-") as tmp:
                recipe.output_dir = tmp  # a fresh run: no checkpoint of an earlier one resumed
                rows.append(_run(recipe, d, networks, log))
    same, plain = rows[-1].pop("settings")
    for r in rows:
        r.pop("settings", None)
    result = {"recipe": recipe_path, "overrides": overrides, "draws": list(draws),
              "seeds": sorted({r["seed"] for r in rows}), "networks": list(networks),
              "rows": rows,
              "settings": {"same": dataclasses.asdict(same), "plain": dataclasses.asdict(plain)}}
    result["summary"] = {k: _mean_std([r[k]["top1"] for r in rows]) for k in networks}
    if {"ltscale", "same"} <= set(networks):
        gaps = [r["ltscale"]["top1"] - r["same"]["top1"] for r in rows]
        result["gap"] = _mean_std(gaps) | {
            "n": len(gaps), "sem": statistics.stdev(gaps) / len(gaps) ** 0.5
            if len(gaps) > 1 else float("nan")}
    log(table(result))
    return result


def _run(recipe, d: int, networks: tuple[str, ...], log) -> dict:
    """The networks on manifest draw ``d`` with the recipe's training seed."""
    from ltscale.stages.budget import scratch_epochs
    from ltscale.stages.context import make_context
    from ltscale.stages.loaders import test_selection

    ctx = make_context(recipe, None, progress=False)
    epochs = scratch_epochs(ctx)  # the recipe's epochs, or its matched budget's
    _, test_rows, _ = test_selection(ctx)
    same = same_settings(ctx, epochs)
    plain = dataclasses.replace(PlainSettings(), network=same.network, epochs=epochs,
                                loss=same.loss, seed=recipe.seed)
    row = {"draw": d, "seed": recipe.seed, "manifest": ctx.manifest.hash}
    if "ltscale" in networks:
        row["ltscale"] = _ltscale(ctx)
    if {"same", "plain"} & set(networks):
        data = load_data(recipe.data.shards, ctx.manifest, test_rows, recipe.data.channels,
                         recipe.data.mean, recipe.data.std)
        for k, settings in (("same", same), ("plain", plain)):
            if k in networks:
                row[k] = train_and_test(data, settings)
    log(f"draw {d} seed {recipe.seed}: " + ", ".join(f"{k} {100 * row[k]['top1']:.2f}"
                                                    for k in networks))
    return row | {"settings": (same, plain)}


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


_NAMES = {"ltscale": "ltscale ce_scratch (the recipe)", "same": "plain script, same settings",
          "plain": "plain script, its own defaults"}


def table(result: dict) -> str:
    """One line per run (draw, training seed), then each network's mean ± std and images/s, and
    the paired gap ltscale − same."""
    nets, rows = result["networks"], result["rows"]
    lines = ["| draw | seed | " + " | ".join(_NAMES[k] for k in nets) + " |",
             "|---|---|" + "---|" * len(nets)]
    for r in rows:
        lines.append(f"| {r['draw']} | {r['seed']} | "
                     + " | ".join(f"{100 * r[k]['top1']:.2f}" for k in nets) + " |")
    lines.append("| mean ± std | | " + " | ".join(
        f"{100 * result['summary'][k]['mean']:.2f} ± {100 * result['summary'][k]['std']:.2f}"
        for k in nets) + " |")
    lines.append("| images/s | | " + " | ".join(
        f"{statistics.fmean(r[k]['images_per_s'] for r in rows):.0f}" for k in nets) + " |")
    if "gap" in result:
        g = result["gap"]
        lines.append(f"\nltscale − same settings, paired over {g['n']} run(s): "
                     f"{100 * g['mean']:+.2f} ± {100 * g['sem']:.2f} (standard error), "
                     f"std {100 * g['std']:.2f}")
    return "\n".join(lines)
