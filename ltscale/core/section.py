"""The base of every recipe section — stages, methods and losses alike: unknown keys are refused,
assignments validated, no silent type conversions, counts bounded (``core/strict.py``)."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ltscale.core.strict import as_line_errors, count_refusal, type_errors


class Section(BaseModel):
    """A recipe section. Every field of every subclass (stages, methods, losses too) refuses a
    flag for a number and a decimal number for an integer, and a count named in
    ``core.strict.COUNT_LIMITS`` above its bound."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # a model validator, not a field one: pydantic allows no before-validator on the field that
    # discriminates the method sections (``name``); the section's other errors come with these
    @model_validator(mode="wrap")
    @classmethod
    def _no_silent_conversion(cls, data, handler):
        errors = type_errors(cls, data)
        if not errors:
            return handler(data)
        try:
            handler(data)
        except ValidationError as exc:  # its other errors, not a second one for the same value
            ours = [e["loc"] for e in errors]
            errors += [e for e in as_line_errors(exc)
                       if not any(e["loc"][:len(loc)] == loc for loc in ours)]
        raise ValidationError.from_exception_data(cls.__name__, errors)

    def __setattr__(self, name, value):  # assignment: the model validator sees no new value
        errors = type_errors(type(self), {name: value})
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        super().__setattr__(name, value)

    @field_validator("*")
    @classmethod
    def _bounded_counts(cls, value, info: ValidationInfo):
        why = count_refusal(info.field_name, value)
        if why:
            raise ValueError(why)
        return value
