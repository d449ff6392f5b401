"""The valid key nearest to an unknown one (``epochz`` → ``epochs``), found in the section that
a validation error's location points at."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel

from ltscale.core.strict import members_of


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [m for m in members_of(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation at ``part`` (a key, list index or union tag, as pydantic locates errors)
    inside ``annotation``; None when it cannot be followed."""
    members, models = members_of(annotation), _models(annotation)
    if isinstance(part, int):
        items = [typing.get_args(m) for m in members if typing.get_origin(m) in (list, tuple)]
        return items[0][0] if items and items[0] else None
    if len(models) == 1 and part in models[0].model_fields:
        return models[0].model_fields[part].annotation
    for m in models:  # a union of sections: pydantic names the member by its tag or class
        name = m.model_fields.get("name")
        if part == m.__name__ or (name is not None and name.default == part):
            return m
    values = [typing.get_args(m) for m in members if typing.get_origin(m) is dict]
    return values[0][1] if values and len(values[0]) == 2 else None


def nearest_key(root: type[BaseModel], loc: tuple) -> str | None:
    """The key of the section at ``loc[:-1]`` closest to the unknown ``loc[-1]`` (None: none is
    close, or the section cannot be told)."""
    annotation: Any = root
    for part in loc[:-1]:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    models = _models(annotation)
    if len(models) != 1:
        return None
    close = difflib.get_close_matches(str(loc[-1]), list(models[0].model_fields), n=1)
    return close[0] if close else None
