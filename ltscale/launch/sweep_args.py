"""``ltscale submit --sweep KEY=V1,V2 …``: command-line sweep axes, checked against the recipe.

Each ``--sweep`` argument names one dotted recipe key and the values it takes, separated by
commas that are not inside brackets (``data.mean=[0.5],[0.3]`` is two values); each value is
read as YAML, like a recipe override. A key the recipe does not have is refused before anything
is queued, naming the closest keys and every key of that section.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from ltscale.config.overrides import flatten
from ltscale.config.safe_yaml import safe_load_limited
from ltscale.config.schema import Recipe
from ltscale.core.dist_env import _split_top_level
from ltscale.core.errors import RecipeError


def _values(key: str, text: str) -> list[Any]:
    try:
        parts = _split_top_level(text)
    except ValueError as exc:
        raise RecipeError(f"--sweep {key}={text}: {exc}") from None
    if not parts:
        raise RecipeError(f"--sweep {key}= has no values; give them as {key}=V1,V2")
    out = []
    for part in parts:
        try:
            out.append(safe_load_limited(part))
        except yaml.YAMLError as exc:
            raise RecipeError(f"--sweep {key}: value {part!r} is not valid YAML ({exc})") from None
    return out


def parse_sweep(args: list[str]) -> dict[str, list[Any]]:
    """``["seed=0,1,2", "manifest.noise=sym:0.2,sym:0.4"]`` → ``{"seed": [0, 1, 2], …}`` in the
    order given; a key given twice is refused."""
    sweep: dict[str, list[Any]] = {}
    for arg in args:
        key, eq, text = arg.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RecipeError(f"--sweep {arg!r}: use KEY=V1,V2 (e.g. seed=0,1,2)")
        if key in sweep:
            raise RecipeError(f"--sweep {key} is given twice; list all its values in one argument")
        sweep[key] = _values(key, text)
    return sweep


def recipe_keys(recipe: Recipe) -> list[str]:
    """Every dotted leaf key of the resolved recipe (the keys a sweep may vary)."""
    return sorted(k for k in flatten(recipe.model_dump())
                  if k.split(".")[0] not in ("sweep", "reference"))


def check_sweep_keys(sweep: dict[str, list[Any]], recipe: Recipe) -> None:
    """Refuse a key that is not a leaf of ``recipe``, with the valid keys."""
    keys = recipe_keys(recipe)
    known = set(keys)
    for key in sweep:
        if key in known:
            continue
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        section = key.split(".")[0]
        same = [k for k in keys if k.split(".")[0] == section]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        listing = same if same else sorted({k.split(".")[0] for k in keys})
        what = f"keys of {section}" if same else "recipe sections"
        raise RecipeError(f"--sweep {key}: the recipe has no key {key}{hint}\n"
                          f"valid {what}: {', '.join(listing)}")
