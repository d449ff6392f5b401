"""The torch backend: DataLoader workers produce whole uint8 batches; normalisation on device.

The sampler's ``Batch`` requests are the DataLoader's batch sampler, so each worker reads one
batch's bytes in one coalesced pass (``ManifestDataset.__getitems__``). Workers are persistent,
prefetch ``settings.prefetch`` batches each, and batches are pinned when the device is CUDA.

With ``settings.decode="gpu"`` the workers hand over each batch undecoded (``EncodedBatch``: JPEG
bytes and every view's drawn parameters, ``ManifestDataset.encoded_items``) and this process
decodes and augments it on the device (``DeviceDecoder``) before normalising; sampler, seeds,
resume and error policy are the same.
"""

from __future__ import annotations

import torch

from ltscale.core.errors import LtscaleError
from ltscale.data.loading.base import EpochStats, LoaderSettings, Normalizer, report_skipped
from ltscale.data.sampling import EpochSampler


def _unwrapped(exc: Exception) -> Exception:
    """A worker's ``LtscaleError`` comes back with the worker's traceback in its message; give the
    user the original one-paragraph message."""
    text = str(exc)
    marker = f"{type(exc).__name__}: "
    if isinstance(exc, LtscaleError) and "Original Traceback" in text and marker in text:
        return type(exc)(text.rsplit(marker, 1)[1].strip())
    return exc


class _Requests(torch.utils.data.Sampler):
    """The sampler's remaining batches of the current epoch, as DataLoader batch indices."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self):
        return self.sampler.batches()

    def __len__(self) -> int:
        return self.sampler.remaining_batches()


def _collated(batch):
    return batch  # the dataset returns whole batches


class _Encoded(torch.utils.data.Dataset):
    """``dataset`` handing over ``EncodedBatch``es (``data.loader.decode: gpu``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, batch):
        return self.dataset.encoded_items(batch)


class TorchLoader:
    def __init__(self, dataset, sampler: EpochSampler, settings: LoaderSettings, *,
                 device: torch.device, mean, std):
        self.dataset, self.sampler, self.device = dataset, sampler, device
        pin = device.type == "cuda" if settings.pin_memory is None else settings.pin_memory
        workers = settings.workers
        # workers hand over uint8 batches (a quarter of the bytes of float32 through shared
        # memory and host-to-device copies); normalising in the workers instead was measured
        # slower on CPU (fresh 38 MB shared-memory float batches: 221 vs 244 img/s)
        self.normalize = Normalizer(mean, std)
        self.decoder, source = None, dataset
        if settings.decode == "gpu":
            from ltscale.data.loading.decode_gpu import DeviceDecoder

            self.decoder = DeviceDecoder(dataset.views, device, dataset.on_error)
            source = _Encoded(dataset)
        self.loader = torch.utils.data.DataLoader(
            source, batch_sampler=_Requests(sampler), collate_fn=_collated,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
            # its own generator: starting an epoch must not draw from the global RNG that
            # dropout & co. use (a resumed run would otherwise shift their stream)
            generator=torch.Generator().manual_seed(sampler.seed),
            prefetch_factor=settings.prefetch if workers > 0 else None)
        self.stats = EpochStats()

    def __len__(self) -> int:
        return self.sampler.remaining_batches()

    def __iter__(self):
        self.stats = EpochStats()
        batches = iter(self.loader)
        try:
            for x, y, pos, info in batches:
                if self.decoder is not None:
                    x, y, pos = self.decoder(x, y, pos, info)
                self.stats.add(len(y), info)
                yield self.normalize(x.to(self.device, non_blocking=True)), y, pos
        except Exception as exc:  # not GeneratorExit: a consumer that stops early keeps the workers
            # a worker raised (e.g. a corrupt sample under the fail policy): stop the workers now
            # rather than when the garbage collector finds the iterator (torch then waits 5 s
            # per worker)
            self.close()
            raise _unwrapped(exc) from None
        report_skipped(self.stats, f"epoch {self.sampler.epoch}")

    def close(self) -> None:
        """Stop the persistent workers (they restart on the next iteration)."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None
