"""The workers' side of ``data.loader.decode: gpu``: a batch handed over undecoded.

A worker reads a batch's bytes in one coalesced pass as for the Pillow path
(``ManifestDataset.encoded_items``) and, per sample, reads only the image header for its size,
draws every view's parameters from the sample's own generator (``views.plan``: the same
``augment_plan.draw_views`` call the Pillow path makes, so the same seed gives the same crops,
flips and colour factors on both paths) and keeps the JPEG bytes as they are. A sample that is no
JPEG (its bytes do not start with the SOI marker ``FF D8``: PNG, BMP, …) is decoded here with
Pillow, to the recipe's channels, and its pixels travel in place of the bytes, so mixed shards
work; the training process only has to crop and colour them.

The batch travels as one ``EncodedBatch``: every payload back to back in one uint8 tensor (one
shared-memory segment through the worker queue, one pinned buffer for the host-to-device copy)
with its offsets, the decoded shapes (None for JPEG bytes), the plans, and each sample's key and
``sample KEY in shard NAME`` for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ltscale.data.augment_torch import open_image, to_tensor
from ltscale.data.pixels import to_mode

JPEG_SOI = b"\xff\xd8"


def is_jpeg(data: bytes) -> bool:
    return data[:2] == JPEG_SOI


@dataclass
class EncodedBatch:
    data: torch.Tensor                          # uint8 (total,): every payload back to back
    offsets: list[int]                          # payload i is data[offsets[i]:offsets[i + 1]]
    shapes: list[tuple[int, int, int] | None]   # None: JPEG bytes; (C, H, W): decoded pixels
    plans: list                                 # per sample: its views' ViewPlans (None: eval)
    where: list[str]                            # per sample: "sample KEY in shard NAME"
    keys: list[str]

    def __len__(self) -> int:
        return len(self.shapes)

    def payload(self, i: int) -> torch.Tensor:
        """Sample ``i``'s JPEG bytes (1-D) or decoded pixels (C, H, W), uint8, no copy."""
        piece = self.data[self.offsets[i]:self.offsets[i + 1]]
        return piece if self.shapes[i] is None else piece.view(self.shapes[i])

    def pin_memory(self) -> "EncodedBatch":
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        return replace(self, data=self.data.pin_memory())


def encode_sample(views, data: bytes, rng: np.random.Generator):
    """(payload uint8 array, decoded shape or None, plans) of one sample. Pillow reads the header
    (an unreadable one raises here, as on the Pillow path); only a non-JPEG is decoded."""
    img = open_image(data)
    w, h = img.size
    plans = views.plan(w, h, rng)
    if is_jpeg(data):
        return np.frombuffer(data, dtype=np.uint8), None, plans
    pixels = to_tensor(to_mode(img, views.mode)).numpy()
    return pixels.reshape(-1), tuple(pixels.shape), plans


def pack(items, where: list[str], keys: list[str]) -> EncodedBatch:
    """One ``EncodedBatch`` of ``encode_sample`` outputs; in a DataLoader worker its buffer is
    allocated in shared memory, so it crosses to the main process without another copy."""
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(payload) for payload, _, _ in items])
    data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        data.share_memory_()
    flat = data.numpy()
    for (payload, _, _), lo, hi in zip(items, offsets[:-1], offsets[1:]):
        flat[lo:hi] = payload
    return EncodedBatch(data, offsets.tolist(), [shape for _, shape, _ in items],
                        [plans for _, _, plans in items], where, keys)
