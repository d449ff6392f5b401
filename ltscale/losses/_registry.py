"""The registry of fine-tuning losses: name → ``ClassificationLoss`` subclass, whose nested
``Config`` holds the loss's options with their defaults and bounds.

Discovery: every module of the subpackage ``ltscale.losses.finetune`` is a loss module, and the
registry imports them all (in sorted module order, so registration is deterministic) the first
time it is asked anything. Nothing else goes into that subpackage: the formulas live in
``losses/classification.py``, the base class in ``losses/base.py``, the pretraining losses in
``ssl.py``/``supcon.py``/``fassl.py``. The recipe's ``finetune.loss`` section
(``config.supervised.LossCfg``) is built from the registered losses' ``Config`` classes when
``ltscale.config.supervised`` is imported.

Adding a loss is one file, ``ltscale/losses/finetune/<name>.py`` (plus its test)::

    from pydantic import Field

    from ltscale.losses import classification as C
    from ltscale.losses._registry import register_loss
    from ltscale.losses.base import ClassificationLoss, LossOptions


    @register_loss("my_loss")
    class MyLoss(ClassificationLoss):
        \"\"\"What it is, and the paper it comes from.\"\"\"

        class Config(LossOptions):
            temperature: float = Field(1.0, gt=0)   # what it does (the paper's value)

        def per_sample(self, logits, targets):
            return C.cross_entropy(logits / self.config.temperature, targets)

Options are flat in a recipe (``finetune.loss: {name: my_loss, temperature: 2.0}``) and shared by
every loss that declares them, so an option another loss already has must be declared with the
same type, default and bounds (best: inherit that loss's ``Config``); building ``LossCfg`` raises
otherwise.
"""

from __future__ import annotations

import importlib
import pkgutil

from ltscale.core.errors import RecipeError
from ltscale.core.registry import Registry
from ltscale.losses.base import ClassificationLoss, LossOptions


def _discover() -> None:
    import ltscale.losses.finetune as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


LOSSES = Registry("loss", discover=_discover, error=RecipeError, plural="losses")


def register_loss(name: str):
    """Class decorator: register a ``ClassificationLoss`` subclass as ``name`` (sets its ``name``)."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, ClassificationLoss)):
            raise TypeError(f"loss {name!r}: {cls!r} is not a ClassificationLoss subclass")
        if not issubclass(cls.Config, LossOptions):
            raise TypeError(f"loss {name!r}: {cls.__name__}.Config must derive from LossOptions")
        LOSSES.register(name, cls)
        cls.name = name
        return cls

    return deco


def loss_names() -> list[str]:
    """Every registered loss, sorted."""
    return LOSSES.names()


def loss_class(name: str) -> type[ClassificationLoss]:
    return LOSSES.get(name)


def loss_config(name: str) -> type[LossOptions]:
    """The options class of loss ``name``."""
    return loss_class(name).Config


def loss_defaults(name: str) -> dict:
    """The options ``name`` accepts, with their defaults."""
    return loss_config(name)().model_dump()


def classification_loss(name: str, counts, **options) -> ClassificationLoss:
    """Loss ``name`` for training class counts ``counts`` (observed labels), options validated."""
    return loss_class(name)(counts, **options)
