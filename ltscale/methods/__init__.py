"""Pretraining methods by name. A method is an nn.Module holding the encoder and its heads whose
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

from ltscale.methods._registry import (METHOD_INPUTS, create_method, method_class,  # noqa: F401
                                       method_names, register_method)

# every method module registers itself on import
from ltscale.methods import (barlow as _barlow, byol as _byol, moco as _moco,  # noqa: F401
                             rotation as _rotation, simclr as _simclr, simsiam as _simsiam,
                             supervised as _supervised)
from ltscale.methods import (fassl as _fassl, fassl_proto as _fassl_proto,  # noqa: F401
                             sdclr as _sdclr)
from ltscale.methods import sbcl as _sbcl, supcon as _supcon  # noqa: F401
