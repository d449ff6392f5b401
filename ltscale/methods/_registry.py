"""The registry of pretraining methods: name → class and options class (the recipe's
``pretrain.method`` section for that name), and the training-set facts a method may declare in
``needs``. Method modules register themselves here; ``ltscale.methods`` imports them all, so that
importing the package fills the registry."""

from __future__ import annotations

from torch import nn

from ltscale.core.registry import Registry

METHODS = Registry("method")                  # name → method class
CONFIGS = Registry("method with recipe options", plural="methods with recipe options")


def register_method(name: str, config: type | None = None):
    """Register a method class under ``name``, with its options class (``config``) when recipes
    may name it; internal methods (the supervised baseline's) have none."""
    def deco(cls):
        METHODS.register(name, cls)
        if config is not None:
            if config.model_fields["name"].default != name:
                raise ValueError(f"{config.__name__}.name defaults to "
                                 f"{config.model_fields['name'].default!r}, not {name!r}")
            CONFIGS.register(name, config)
        return cls

    return deco


def method_configs() -> tuple[type, ...]:
    """The options class of every method a recipe can name, in registration order."""
    return tuple(CONFIGS.entries().values())


def method_config(name: str) -> type:
    return CONFIGS.get(name)


# what a method may ask for in ``needs``: the training set it will see, in the dataset's order
METHOD_INPUTS = {
    "num_classes": "number of classes of the index",
    "class_counts": "observed labeled samples per class (list of int)",
    "labels": "observed label of every training sample, indexed by the batch's positions "
              "(int64 array; -1 for unlabeled samples)",
    "num_samples": "number of training samples (positions run 0 … num_samples − 1)",
}


def method_class(name: str):
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


def create_method(name: str, encoder: nn.Module, **options) -> nn.Module:
    return method_class(name)(encoder, **options)
