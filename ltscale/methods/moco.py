"""MoCo v2 (Chen et al. 2020, after He et al. 2020): a query encoder + MLP head trained with
InfoNCE against a momentum (EMA) key encoder's keys and a queue of past keys from all ranks.
Shuffled BN (``shuffle_bn``) hides the batch from the key encoder's BN; with it off the recipe is
expected to use SyncBN. Defaults: queue 65536, m 0.999, T 0.2, head 2048 → 128."""

from __future__ import annotations

import torch
from torch import nn

from ltscale.engine.dist import gather, shuffle_batch, unshuffle_batch
from ltscale.losses.ssl import infonce_with_queue
from ltscale.methods._registry import register_method
from ltscale.methods.base import PretrainMethod
from ltscale.methods.ema import EMA
from ltscale.methods.simclr import projector_dims, z_std
from ltscale.models.heads import mlp


@register_method("moco")
class MoCo(PretrainMethod):
    views = 2
    uses_labels = False
    replicated_buffers = ("queue", "queue_ptr")  # every rank enqueues the same gathered keys
    keep_fp32 = ("queue",)  # normalised keys: stored fp32 whatever the training precision

    def __init__(self, encoder: nn.Module, proj_dim: int = 2048, out_dim: int = 128,
                 proj_layers: int = 2, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, shuffle_bn: bool = True, symmetric: bool = False):
        super().__init__()
        self.encoder = encoder
        # BN in the hidden layer (not in the original v2 head) so that fine-tuning's proj_head
        # mode can take the first Linear → BN → ReLU layer, as from the other methods
        self.projector = mlp(projector_dims(encoder.feat_dim, proj_dim, out_dim, proj_layers),
                             last_bn=False)
        self.key_net = EMA(self.encoder, self.projector)
        self.momentum, self.temperature = momentum, temperature
        self.shuffle_bn, self.symmetric = shuffle_bn, symmetric
        queue = nn.functional.normalize(torch.randn(queue_size, out_dim), dim=1)
        self.register_buffer("queue", queue)  # normalised keys, oldest overwritten first
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def param_groups(self):
        # the key encoder is only moved by the EMA: no optimizer state, no weight decay
        return [{"params": list(self.encoder.parameters()) + list(self.projector.parameters())}]

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.key_net.update(self.momentum, self.encoder, self.projector)

    @torch.no_grad()
    def _keys(self, x):
        if self.training and self.shuffle_bn:
            x, undo = shuffle_batch(x)
            return nn.functional.normalize(unshuffle_batch(self.key_net(x), undo).float(), dim=1)
        return nn.functional.normalize(self.key_net(x).float(), dim=1)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write the global batch's keys (all ranks, rank order) over the oldest ones."""
        size = self.queue.shape[0]
        keys = gather(keys)[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def forward(self, batch):
        views = batch[0]  # (B, 2, C, H, W)
        b = views.shape[0]
        x1, x2 = views[:, 0], views[:, 1]
        queue = self.queue.clone()  # the in-place enqueue below must not touch the graph's copy
        if self.symmetric:
            q = self.projector(self.encoder(views.flatten(0, 1))).view(b, 2, -1)
            q1, q2 = q.unbind(1)
            k = self._keys(views.flatten(0, 1)).view(b, 2, -1)
            k1, k2 = k.unbind(1)
            loss = 0.5 * (infonce_with_queue(q1, k2, queue, self.temperature)
                          + infonce_with_queue(q2, k1, queue, self.temperature))
            new_keys = torch.cat([k1, k2])
        else:
            q1 = self.projector(self.encoder(x1))
            new_keys = self._keys(x2)
            loss = infonce_with_queue(q1, new_keys, queue, self.temperature)
        if self.training:  # the loss used the queue before this batch's keys join it
            self._enqueue(new_keys)
        return {"loss": loss, "z_std": z_std(q1)}
