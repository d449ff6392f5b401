"""One loader interface over the backends: what the stages iterate. ``base.py`` holds the
shared types; each backend is a module of its own (``torch_loader``, ``dali_loader``,
``stream_loader``), imported only when chosen.

``build_loader`` takes a dataset description (index, rows, labels), one ``EpochSampler`` and the
view maker, and returns an iterable of ``(images, labels, positions)`` with images already on the
training device as normalised float tensors — from the torch backend (DataLoader workers), the
DALI backend (``decoders.image`` on ``mixed``/``cpu``) or the streaming path (``webdataset``, for
shards that can only be streamed; see ``stream_loader.py``). The sampler decides the ids; the two
indexed backends read exactly those, in that order. ``settings.decode="gpu"`` (torch backend only)
has the workers hand over JPEG bytes and drawn view parameters, decoded and augmented on the
training device (``decode_gpu.py``).

Every loader keeps ``stats`` for the epoch it last ran (batches, samples, bytes read, read calls,
skipped samples with keys and reasons) and logs the skipped keys when the epoch ends.
"""

from __future__ import annotations

import torch

from ltscale.core.errors import DataError, RecipeError
from ltscale.data.decode_option import decode_refusal
from ltscale.data.loading.base import (  # noqa: F401
    BACKENDS,
    EpochStats,
    Loader,
    LoaderSettings,
    Normalizer,
    report_skipped,
)


def build_loader(dataset, sampler, settings: LoaderSettings, *, device: torch.device,
                 mean, std, preset=None, eval_spec=None, channels: int = 3) -> Loader:
    """The loader for ``settings.backend`` over ``dataset`` in ``sampler`` order."""
    refusal = decode_refusal(settings.backend, settings.decode)
    if refusal:
        raise RecipeError(refusal)
    if settings.backend == "torch":
        from ltscale.data.loading.torch_loader import TorchLoader

        loader = TorchLoader(dataset, sampler, settings, device=device, mean=mean, std=std)
    elif settings.backend == "dali":
        from ltscale.data.loading.dali_loader import DaliLoader

        loader = DaliLoader(dataset, sampler, settings, device=device, mean=mean, std=std,
                            preset=preset, eval_spec=eval_spec, channels=channels)
    elif settings.backend == "stream":
        from ltscale.data.loading.stream_loader import StreamingLoader, shard_urls

        urls = shard_urls(dataset.reader.index, dataset.rows, settings.urls)
        loader = StreamingLoader(dataset, sampler, settings, device=device, mean=mean, std=std,
                                 urls=urls, shuffle_buffer=settings.shuffle_buffer,
                                 train=sampler.tail != "keep")
    else:
        raise DataError(f"unknown loader backend {settings.backend!r}; choose one of {BACKENDS}")
    loader.preset = preset
    return loader
