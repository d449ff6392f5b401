"""Loss maths as pure functions of tensors (no distributed calls, no devices), and the fine-tuning
losses by name: ``classification_loss(name, counts, **options)`` (``_registry.py``)."""

from ltscale.losses._registry import (  # noqa: F401
    classification_loss,
    loss_class,
    loss_config,
    loss_defaults,
    loss_names,
    option_names,
    register_loss,
)
