"""Magnitude pruning masks for SDCLR's self-competitor (Jiang et al. 2021).

The masks zero the smallest-magnitude entries of a module's convolution and linear weights
(biases and normalisation layers are never pruned). They are buffers of a ``MagnitudeMasks``
module, so checkpoints carry them, and they are applied functionally: ``masked(module)`` returns
``weight · mask`` tensors that are still functions of the module's own parameters, so a forward
through ``torch.func.functional_call`` with them trains the shared (dense) weights while the
module itself stays an ordinary network.

Scopes: ``layer`` prunes the same fraction of every weight tensor (each layer keeps
``n − round(ratio·n)`` of its ``n`` weights, at least one); ``global`` ranks all the weights
together with one threshold, as the released SDCLR code does, so layers keep different
fractions.
"""

from __future__ import annotations

import torch
from torch import nn

PRUNE_SCOPES = ("layer", "global")


def prunable_weights(module: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the Conv/Linear weight tensors of ``module``."""
    kinds = (nn.modules.conv._ConvNd, nn.Linear)
    return [f"{name}.weight" if name else "weight" for name, m in module.named_modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), nn.Parameter)]


def _keep_largest(magnitudes: torch.Tensor, keep: int) -> torch.Tensor:
    """A bool mask, True at exactly ``keep`` positions holding the largest ``magnitudes``."""
    flat = magnitudes.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(magnitudes)


def kept_count(n: int, ratio: float) -> int:
    """Weights kept out of ``n`` when a fraction ``ratio`` is pruned (never fewer than one)."""
    return max(1, n - round(ratio * n))


@torch.no_grad()
def magnitude_masks(weights: list[torch.Tensor], ratio: float,
                    scope: str = "layer") -> list[torch.Tensor]:
    """Bool masks (one per tensor, same shapes) keeping the largest-|w| entries once a fraction
    ``ratio`` is pruned, per tensor (``layer``) or over all tensors together (``global``)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"prune scope must be one of {PRUNE_SCOPES}, got {scope!r}")
    mags = [w.detach().abs() for w in weights]
    if scope == "layer":
        return [_keep_largest(m, kept_count(m.numel(), ratio)) for m in mags]
    flat = torch.cat([m.flatten().float() for m in mags])
    kept = _keep_largest(flat, kept_count(flat.numel(), ratio))
    return [part.view_as(m) for part, m in zip(kept.split([m.numel() for m in mags]), mags)]


class MagnitudeMasks(nn.Module):
    """One bool buffer per prunable weight of the module it was built for.

    The module is not held (it stays the owner's submodule); it is passed to ``recompute`` and
    ``masked``. Buffer names are the parameter names with dots replaced by ``__``."""

    def __init__(self, module: nn.Module, ratio: float, scope: str = "layer"):
        super().__init__()
        self.ratio, self.scope = ratio, scope
        self.names = prunable_weights(module)
        if not self.names:
            raise ValueError(f"{type(module).__name__} has no convolution or linear weights to "
                             "prune")
        params = dict(module.named_parameters())
        for name in self.names:
            self.register_buffer(self._key(name), torch.ones_like(params[name],
                                                                  dtype=torch.bool))
        self.recompute(module)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, self._key(name)) for name in self.names}

    @torch.no_grad()
    def recompute(self, module: nn.Module) -> None:
        """New masks from the current magnitudes of ``module``'s weights."""
        params = dict(module.named_parameters())
        new = magnitude_masks([params[n] for n in self.names], self.ratio, self.scope)
        for name, mask in zip(self.names, new):
            getattr(self, self._key(name)).copy_(mask)

    def masked(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``{name: weight · mask}`` for ``functional_call``; gradients reach the weights
        (through the kept entries only)."""
        params = dict(module.named_parameters())
        return {name: params[name] * mask.to(params[name].dtype)
                for name, mask in self.masks().items()}
