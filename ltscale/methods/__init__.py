"""Pretraining methods by name. A method's recipe options (a ``Section`` with a ``name`` literal,
the recipe's ``pretrain.method``) are declared in ``options.py``, which imports no torch, so a
recipe validates without loading any method; the method module registers the class with
``@register_method(name)``, which binds those options as its ``Config``. The first query of the
registry (``method_class``, ``method_names``, ``create_method``) imports every module of this
package (sorted; the helpers — EMA, pruning, SBCL's clustering, the probe — register nothing), so
a new method file is found without editing this one.

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

from ltscale.methods._registry import (  # noqa: F401
    METHOD_INPUTS,
    create_method,
    method_class,
    method_config,
    method_configs,
    method_names,
    register_method,
)
