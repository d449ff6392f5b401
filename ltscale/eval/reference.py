"""Paper vs ours: each figure a recipe's ``reference`` records, beside the runs that reproduce it.

A cell (``where``: a sweep point, ``model``: the report's model name, ``metric``, ``value`` in
percent) is matched by the finished runs of the recipe's experiment that evaluated that model
(tag ``ltscale.model``) with every ``where`` key at that value in their params (the flattened
resolved recipe; a mapping value such as ``finetune: {mode: proj_head, lr: 0.003}`` stands for
its dotted keys). Ours is the mean ± sample std over the matching runs (typically seeds), in
percent, and Δ = ours − paper.
"""

from __future__ import annotations

import math

import numpy as np

from ltscale.config.overrides import flatten
from ltscale.config.schema import Recipe
from ltscale.eval.aggregate import format_mean_std
from ltscale.eval.compare import ALL_MODELS, load_runs, same_value

HEADER = ["model", "setting", "metric", "paper", "ours", "runs", "Δ"]


def param_text(value) -> str:
    """A value as MLflow stores it as a param."""
    return str(value)


def cell_params(where: dict) -> dict[str, str]:
    """The dotted recipe keys and param texts a cell's ``where`` stands for."""
    out = {}
    for key, value in where.items():
        if isinstance(value, dict):
            out.update({k: param_text(v) for k, v in flatten(value, key + ".").items()})
        else:
            out[key] = param_text(value)
    return out


def load_model_runs(experiment: str, uri: str) -> list[dict]:
    """``{"params", "metrics", "tags"}`` of the experiment's finished runs that evaluated a model
    (any stage: eval, the baselines, self-training)."""
    return load_runs(experiment, uri, stage=ALL_MODELS)


def matching(runs: list[dict], cell) -> list[float]:
    """The cell's metric (a fraction, as logged) of every run that reproduces it."""
    want = cell_params(cell.where)
    values = []
    for r in runs:
        if r["tags"].get("ltscale.model") != cell.model:
            continue
        if not all(same_value(r["params"].get(k), v) for k, v in want.items()):
            continue
        value = r["metrics"].get(f"test/{cell.metric}")
        if value is not None and not math.isnan(value):
            values.append(float(value))
    return values


def reference_rows(recipe: Recipe, runs: list[dict], digits: int = 1) -> list[list[str]]:
    """One row per reference cell of ``recipe``: paper, ours (mean ± std), runs, Δ."""
    rows = []
    for cell in recipe.reference.cells:
        values = matching(runs, cell)
        setting = ", ".join(f"{k}={v}" for k, v in cell_params(cell.where).items()) or "—"
        if values:
            mean = float(np.mean(values))
            std = float(np.std(values, ddof=1)) if len(values) > 1 else None
            ours = format_mean_std(mean, std, digits)  # fractions shown as percent
            delta = f"{100 * mean - cell.value:+.{digits}f}"
        else:
            ours, delta = "not run", ""
        rows.append([cell.model, setting, cell.metric, f"{cell.value:.{digits}f}", ours,
                     str(len(values)), delta])
    return rows
