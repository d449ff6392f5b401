"""Pretraining methods by name. Each method file holds its options class (a ``Section`` with a
``name`` literal, the recipe's ``pretrain.method``) beside the method and registers both with
``@register_method(name, Config)``: adding a method is one file plus its test. Importing this
package imports every module in it (sorted; the helpers — EMA, pruning, SBCL's clustering, the
probe — register nothing), so a new method file is found without editing this one.

 A method is an nn.Module holding the encoder and its heads whose
``forward(batch)`` returns a dict with a scalar ``loss``; optional hooks the engine calls:
``param_groups()``, ``after_step(step, total_steps)`` and ``set_epoch(epoch, epochs)``.

A method that needs facts about its training set declares them in a class attribute ``needs``
(names from ``METHOD_INPUTS``); the pretraining stage passes them as keyword arguments. Other
class attributes the engine reads: ``replicated_buffers`` (buffers every rank updates alike, left
out of DDP's broadcasts), ``keep_fp32`` (buffers or child modules kept fp32 under any precision,
e.g. EMA targets and queues: ``engine/precision.py``) and ``requires_previous`` (the method whose
stage must come right before this one's).

``set_epoch`` runs when an epoch starts, once: a run resumed inside an epoch restores the
checkpoint over it (``engine/loop.py``), so the hook may depend on the current weights."""

from __future__ import annotations

import importlib
import pkgutil

from ltscale.methods._registry import (  # noqa: F401
    METHOD_INPUTS,
    create_method,
    method_class,
    method_config,
    method_configs,
    method_names,
    register_method,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
