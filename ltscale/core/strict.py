"""What every recipe ``Section`` checks besides pydantic's own validation: values that pydantic
would convert silently, and counts that no machine could finish.

- Types: a flag is no number (``epochs: true`` is not 1, ``lr: false`` not 0.0) and a decimal
  number is no integer (``epochs: 2.5`` is not 2, and ``2.0`` is refused too: it is a float in
  the file, a sign of a computed or mistyped value). An integer still fills a float (``lr: 1``), a
  YAML list still fills a tuple, and a string still reaches pydantic (YAML reads ``1e-3`` as a
  string; ``lr: 1e-3`` must keep working). Not pydantic's ``strict`` mode: it refuses lists for
  tuples and ``1e-3`` for floats, and still takes ``true`` for ``Literal[1, 3]``.
- Counts: a field named in ``COUNT_LIMITS`` is bounded above in every section, stage and method.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

# Epoch counts (pretraining, fine-tuning, from-scratch, self-training, cRT, warm-up): published
# schedules run to a few thousand epochs (SimSiam/BYOL 800-1,000, SDCLR 2,000 on CIFAR); at
# 10,000 images/s, 100,000 CIFAR epochs already take 6 days. Above it, `1000000000` (a typo, or a
# count meant for steps) would start a run that never ends.
EPOCHS_MAX = 100_000
# Images per batch: 16 times the largest batch of the large-batch literature (65,536, LARS/LAMB);
# one batch of 2^20 CIFAR images is 12 GiB as float32 before any activation.
BATCH_MAX = 1 << 20
# A cap on steps per epoch: 10 M steps are an epoch of 320 M images at batch 32 (JFT-300M).
STEPS_MAX = 10_000_000

COUNT_LIMITS: dict[str, tuple[int, str]] = {
    **{name: (EPOCHS_MAX, "no run could finish more epochs") for name in
       ("epochs", "crt_epochs", "warmup_epochs")},
    "batch_size": (BATCH_MAX, "no machine holds a larger batch"),
    "max_steps_per_epoch": (STEPS_MAX, "no dataset has more steps per epoch"),
}


def count_refusal(field: str, value: Any) -> str | None:
    """Why ``value`` is too large for the count ``field`` (None: it is not, or no count)."""
    limit = COUNT_LIMITS.get(field)
    if limit is None or not isinstance(value, (int, float)) or value <= limit[0]:
        return None
    return f"at most {limit[0]}: {limit[1]}"


def members_of(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: a union's members, Annotated and Optional unwrapped."""
    if typing.get_origin(annotation) is Annotated:
        return members_of(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in members_of(a)]
    return [annotation]


def _scalar_kinds(members: list[Any]) -> set[Any]:
    kinds = set()
    for m in members:
        if typing.get_origin(m) is Literal:
            kinds |= {type(v) for v in typing.get_args(m)}
        elif m in (int, float, bool, Any):
            kinds.add(m)
    return kinds


def _item_types(members: list[Any], value: list | tuple) -> list[Any] | None:
    """The annotation of each item of ``value`` under the first list/tuple member (None: none)."""
    for m in members:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin is list and args:
            return [args[0]] * len(value)
        if origin is tuple and args:
            if len(args) == 2 and args[1] is Ellipsis:
                return [args[0]] * len(value)
            return list(args) if len(args) == len(value) else None
    return None


def type_refusal(value: Any, annotation: Any) -> tuple[tuple[int, ...], Any, str] | None:
    """Where in ``value`` (a list index path, () for the value itself), which value, and why it
    may not fill ``annotation`` without a silent conversion (None: it may, or pydantic
    decides)."""
    members = members_of(annotation)
    if isinstance(value, (list, tuple)):
        for i, (item, item_type) in enumerate(zip(value, _item_types(members, value) or [])):
            found = type_refusal(item, item_type)
            if found:
                return (i, *found[0]), *found[1:]
        return None
    kinds = _scalar_kinds(members)
    if Any in kinds:
        return None
    if isinstance(value, bool):
        if bool not in kinds and kinds & {int, float}:
            return (), value, "a number is expected, not a flag (true/false)"
    elif isinstance(value, float) and int in kinds and float not in kinds:
        return (), value, "an integer is expected, not a decimal number"
    return None


def type_errors(model: type, data: Any) -> list[InitErrorDetails]:
    """Every value of the mapping ``data`` that would be converted silently into its field of
    ``model``, as pydantic line errors located at the field (and item)."""
    if not isinstance(data, dict):
        return []
    errors = []
    for name, value in data.items():
        field = model.model_fields.get(name)
        found = type_refusal(value, field.annotation) if field is not None else None
        if found:
            where, got, why = found
            errors.append(InitErrorDetails(type=PydanticCustomError("silent_conversion", why),
                                           loc=(name, *where), input=got))
    return errors


def as_line_errors(exc: ValidationError) -> list[InitErrorDetails]:
    """``exc``'s errors as line errors to raise again with others (type, location, message and
    input kept)."""
    return [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"],
                             input=e.get("input"))
            for e in exc.errors()]
