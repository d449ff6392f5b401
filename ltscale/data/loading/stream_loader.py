"""The streaming path: for shards that can only be read front to back.

Use it when the shards are not on a file system the trainer can ``pread`` — object stores
(``pipe:aws s3 cp s3://bucket/ds/{shard} -``), HTTP (``https://host/ds/{shard}``) or any other
``pipe:`` command. It runs the ``webdataset`` library's pipeline: shard URLs split over ranks and
workers and shuffled per epoch, tar members grouped into samples, **filtered by the manifest**
(only its keys pass, with the manifest's observed labels — never the label stored in the shard),
a shuffle buffer, then the same views and batching as the indexed path.

What it gives up, compared with the indexed backends (``torch``, ``dali``), which are the default
and the right choice whenever the shards are local or on a network file system:

- it reads whole shards, also the samples the manifest leaves out (a γ=100 subset still streams
  the whole shard set; only shards without any selected sample are skipped);
- order comes from shard shuffling and a finite buffer, not from the sampler: batches are more
  neighbour-heavy than a global shuffle (``ltscale bench loader`` measures this), balanced
  sampling is not available, and a resumed run restarts the interrupted epoch's stream instead of
  continuing with the exact next batch.

Every rank still yields the same number of batches per epoch (the sampler's count, dropping the
tail): training streams repeat their shards and stop after that many batches.
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch

from ltscale.core.errors import DataError
from ltscale.data.loading.base import EpochStats, LoaderSettings, Normalizer, report_skipped

_DECODE_ERRORS = (OSError, ValueError, SyntaxError)


def shard_urls(index, rows: np.ndarray, template: str | None) -> list[str]:
    """URLs of the shards holding ``rows``: local paths, or ``template`` with ``{shard}``
    replaced by each shard's file name."""
    used = np.unique(index.shard[rows]).tolist()
    names = [index.shards[s] for s in used]
    if template is None:
        return [str(index.root / n) for n in names]
    if "{shard}" not in template:
        raise DataError(f"data.loader.urls {template!r} must contain {{shard}}, the place of the "
                        "shard file name")
    return [template.replace("{shard}", n) for n in names]


class _Make:
    """A webdataset sample dict → (views, label, position) or a skip marker."""

    def __init__(self, wanted: dict, views, seed: int, epoch: int):
        self.wanted, self.views, self.seed, self.epoch = wanted, views, seed, epoch

    def __call__(self, sample: dict):
        key = sample["__key__"]
        pos, ext, label = self.wanted[key]
        data = sample.get(ext)
        if data is None:
            return ("skip", key, f"the stream has no member {key}.{ext}")
        try:
            x = self.views(data, np.random.default_rng([self.seed, self.epoch, pos]))
        except _DECODE_ERRORS as exc:
            return ("skip", key, f"cannot decode image ({exc}) in {sample.get('__url__')}")
        return (x, label, pos)


def _collate(samples: list):
    good = [s for s in samples if s[0] != "skip"]
    skipped = [(s[1], s[2]) for s in samples if s[0] == "skip"]
    if not good:
        return None, None, None, skipped
    x = torch.stack([s[0] for s in good])
    if x.dim() == 5 and x.shape[1] == 1:
        x = x[:, 0]
    y = torch.tensor([s[1] for s in good], dtype=torch.int64)
    pos = torch.tensor([s[2] for s in good], dtype=torch.int64)
    return x, y, pos, skipped


class StreamingLoader:
    """webdataset streaming over ``urls`` filtered to ``dataset``'s manifest rows."""

    def __init__(self, dataset, sampler, settings: LoaderSettings, *, device, mean, std,
                 urls: list[str], shuffle_buffer: int = 5000, train: bool = True):
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise DataError("the streaming loader needs the webdataset library: "
                            "pip install webdataset") from None
        index = dataset.reader.index
        self.dataset, self.sampler, self.settings = dataset, sampler, settings
        self.device, self.urls, self.train = device, urls, train
        self.buffer = shuffle_buffer
        keys, exts = index.key[dataset.rows], index.ext[dataset.rows]
        self.wanted = {str(k): (p, str(e), int(y)) for p, (k, e, y)
                       in enumerate(zip(keys, exts, dataset.labels))}
        streams = max(1, settings.workers) * sampler.world_size
        if len(urls) < streams:
            raise DataError(f"streaming needs at least one shard per rank and worker: {len(urls)} "
                            f"shard(s) for {sampler.world_size} rank(s) × "
                            f"{max(1, settings.workers)} worker(s); use fewer workers or the "
                            "indexed backend (data.loader.backend=torch)")
        self.normalize = Normalizer(mean, std)
        self.stats = EpochStats()

    def __len__(self) -> int:
        if self.train:
            return self.sampler.batches_per_epoch()
        return -(-len(self.wanted) // (self.sampler.batch_size * self.sampler.world_size))

    def _pipeline(self):
        import webdataset as wds

        rank, world = self.sampler.rank, self.sampler.world_size
        epoch, seed = self.sampler.epoch, self.sampler.seed
        wanted = self.wanted
        handler = (wds.reraise_exception if self.settings.on_error == "fail"
                   else wds.warn_and_continue)
        ds = wds.WebDataset(
            self.urls, handler=handler, repeat=self.train, empty_check=False,
            shardshuffle=len(self.urls) if self.train else False, detshuffle=True,
            seed=seed * 1_000_003 + epoch,
            nodesplitter=lambda src: islice(src, rank, None, world))
        ds = ds.select(lambda s: s["__key__"] in wanted)
        if self.train:
            ds = ds.shuffle(self.buffer, initial=min(self.buffer, 1000))
        ds = ds.map(_Make(wanted, self.dataset.views, seed, epoch))
        ds = ds.batched(self.sampler.batch_size, collation_fn=_collate, partial=not self.train)
        workers = self.settings.workers
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers,
                               prefetch_factor=self.settings.prefetch if workers else None)
        return loader.with_epoch(len(self)) if self.train else loader

    def __iter__(self):
        self.stats = EpochStats()
        try:
            for x, y, pos, skipped in self._pipeline():
                self.stats.skipped.extend(skipped)
                if x is None:
                    continue
                self.stats.batches += 1
                self.stats.samples += len(y)
                yield self.normalize(x.to(self.device, non_blocking=True)), y, pos
        except (OSError, ValueError) as exc:  # a broken tar or pipe under the fail policy
            raise DataError(f"streaming {len(self.urls)} shard(s) failed: {exc}") from None
        report_skipped(self.stats, f"epoch {self.sampler.epoch} (stream)")
