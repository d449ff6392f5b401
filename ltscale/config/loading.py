"""Reading a recipe: YAML file (size-limited, no tags) → dotted overrides → the typed
``Recipe``, with every validation error as one line naming its dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ltscale.config.overrides import apply_overrides
from ltscale.config.safe_yaml import MAX_RECIPE_BYTES, safe_load_limited
from ltscale.config.schema import Recipe
from ltscale.core.errors import LtscaleError, RecipeError
from ltscale.core.suggest import nearest_key


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) or len(str(value)) < 4 * limit \
        else f"{type(value).__name__} of {len(value)} items"
    return text if len(text) <= limit else text[:limit] + "…"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"recipe {source} is invalid:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        if err["type"] == "extra_forbidden":
            near = nearest_key(Recipe, err["loc"])
            hint = f"did you mean {near}? " if near else "check the spelling; "
            lines.append(f"  {key}: unknown key ({hint}see recipes/quickstart.yaml for the keys "
                         "a recipe takes)")
        else:
            got = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if isinstance(got, dict):  # a whole section: its message says what is wrong
                lines.append(f"  {key or 'recipe'}: {msg}")
            else:
                lines.append(f"  {key}: {msg} (got {_short(got)})")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        if path.is_dir():
            raise RecipeError(f"recipe {path} is a folder; pass a recipe file (e.g. "
                              "recipes/quickstart.yaml)")
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is {size} bytes; a recipe is at most "
                              f"{MAX_RECIPE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
        raw = safe_load_limited(text)
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise RecipeError(f"recipe {path} is not valid YAML: {detail}") from None
    if raw is None:
        raise RecipeError(f"recipe {path} is empty; start from recipes/quickstart.yaml (an empty "
                          "recipe would silently run every default)")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    return recipe_from_dict(apply_overrides(raw, overrides or []), str(path))


def recipe_from_dict(raw: dict, source: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source)) from None
    except LtscaleError as exc:
        raise RecipeError(f"recipe {source} is invalid: {exc}") from None
