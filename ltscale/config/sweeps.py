"""Sweeps: one recipe, a grid of runs.

A recipe's ``sweep`` maps dotted keys to the values they take; the grid is their product, in
the order the keys are written. Every point is a recipe of its own — the base recipe with the
point's values set, no sweep, and its own output folder ``<output_dir>/<point label>`` — and is
validated as one, so a value that does not fit its key fails before any work, naming the point.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from ltscale.config.loading import load_recipe
from ltscale.config.schema import Recipe
from ltscale.core.errors import RecipeError


def grid(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, the first key varying slowest."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*sweep.values())]


def point_label(point: dict[str, Any]) -> str:
    """A folder-safe name for a point, e.g. ``manifest.noise=sym-0.2,seed=1``."""
    text = ",".join(f"{k}={v}" for k, v in point.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", text)


def point_overrides(point: dict[str, Any]) -> list[str]:
    # JSON is valid YAML: lists, numbers and strings survive the override parser unchanged
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]


def expand(path: str | Path, overrides: list[str] | None = None) -> list[tuple[dict, Recipe]]:
    """(point, recipe) for every point of the recipe's sweep; one ``({}, recipe)`` without one."""
    overrides = list(overrides or [])
    base = load_recipe(path, overrides)
    if not base.sweep:
        return [({}, base)]
    out = []
    for point in grid(base.sweep):
        label = point_label(point)
        extra = point_overrides(point) + ["sweep={}", "reference=null",
                                          f"output_dir={json.dumps(f'{base.output_dir}/{label}')}"]
        try:
            recipe = load_recipe(path, overrides + extra)
        except RecipeError as exc:
            raise RecipeError(f"sweep point {label}: {exc}") from None
        out.append((point, recipe))
    return out
