"""The registry of fine-tuning losses: name → ``ClassificationLoss`` subclass, whose ``Config``
holds the loss's options with their defaults and bounds.

Discovery: every module of the subpackage ``ltscale.losses.finetune`` is a loss module, and the
registry imports them all (in sorted module order, so registration is deterministic) the first
time it is asked anything. Nothing else goes into that subpackage: the formulas live in
``losses/classification.py``, the base class in ``losses/base.py``, the pretraining losses in
``ssl.py``/``supcon.py``/``fassl.py``. The options live apart, torch-free, in
``losses/options.py``: the recipe's ``finetune.loss`` section (``config.supervised.LossCfg``) is
built from them without importing a loss, and this module imports no torch either.

Adding a loss is its options (``losses/options.py``, when it has any) and one file,
``ltscale/losses/finetune/<name>.py`` (plus its test)::

    # losses/options.py
    @loss_options("my_loss")
    class MyLossOptions(LossOptions):
        temperature: float = Field(1.0, gt=0)   # what it does (the paper's value)

    # losses/finetune/my_loss.py
    from ltscale.losses import classification as C
    from ltscale.losses._registry import register_loss
    from ltscale.losses.base import ClassificationLoss


    @register_loss("my_loss")
    class MyLoss(ClassificationLoss):
        \"\"\"What it is, and the paper it comes from.\"\"\"

        def per_sample(self, logits, targets):
            return C.cross_entropy(logits / self.config.temperature, targets)

Options are flat in a recipe (``finetune.loss: {name: my_loss, temperature: 2.0}``) and shared by
every loss that declares them, so an option another loss already has must be declared with the
same type, default and bounds (best: inherit that loss's options class); building ``LossCfg``
raises otherwise. A loss defined outside ltscale may nest its own ``Config`` (a ``LossOptions``)
instead: ``register_loss`` registers it as that loss's options.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from ltscale.core.errors import RecipeError
from ltscale.core.registry import Registry
from ltscale.losses.options import LOSS_OPTIONS, LossOptions

if TYPE_CHECKING:
    from ltscale.losses.base import ClassificationLoss


def _discover() -> None:
    import ltscale.losses.finetune as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


LOSSES = Registry("loss", discover=_discover, error=RecipeError, plural="losses")


def register_loss(name: str):
    """Class decorator: register a ``ClassificationLoss`` subclass as ``name``, with the options
    registered under that name (or the class's own nested ``Config``) as its ``Config``; sets
    ``name`` and ``classifier`` (the options' classifier kind)."""
    def deco(cls):
        from ltscale.losses.base import ClassificationLoss  # the loss module imported torch

        if not (isinstance(cls, type) and issubclass(cls, ClassificationLoss)):
            raise TypeError(f"loss {name!r}: {cls!r} is not a ClassificationLoss subclass")
        own = cls.__dict__.get("Config")
        if own is not None:
            if not (isinstance(own, type) and issubclass(own, LossOptions)):
                raise TypeError(f"loss {name!r}: {cls.__name__}.Config must derive from "
                                "LossOptions")
            LOSS_OPTIONS.register(name, own)
        elif name not in LOSS_OPTIONS:
            raise TypeError(f"loss {name!r} has no options: register them in "
                            "ltscale/losses/options.py (@loss_options) or nest a Config")
        LOSSES.register(name, cls)
        cls.name, cls.Config = name, LOSS_OPTIONS.get(name)
        cls.classifier = cls.Config.classifier
        return cls

    return deco


def loss_names() -> list[str]:
    """Every registered loss, sorted."""
    return LOSSES.names()


def loss_class(name: str) -> type[ClassificationLoss]:
    return LOSSES.get(name)


def loss_config(name: str) -> type[LossOptions]:
    """The options class of loss ``name`` (without importing the loss)."""
    return LOSS_OPTIONS.get(name)


def option_names() -> list[str]:
    """Every loss a recipe may name: those with registered options (without importing one)."""
    return LOSS_OPTIONS.names()


def loss_defaults(name: str) -> dict:
    """The options ``name`` accepts, with their defaults."""
    return loss_config(name)().model_dump()


def classification_loss(name: str, counts, **options) -> ClassificationLoss:
    """Loss ``name`` for training class counts ``counts`` (observed labels), options validated."""
    return loss_class(name)(counts, **options)
