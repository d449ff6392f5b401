"""Dotted keys: ``key.sub=value`` overrides (values parsed as YAML data) applied to a raw
recipe, and the reverse, a nested section flattened to dotted keys (MLflow params)."""

from __future__ import annotations

from typing import Any

import yaml

from ltscale.config.safe_yaml import safe_load_limited
from ltscale.core.errors import RecipeError


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    try:  # values are data: safe_load refuses tags such as !!python/object
        return key.strip().split("."), safe_load_limited(value)
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: {key.strip()} is not a valid YAML value "
                          f"({' '.join(str(exc).split())})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
