"""`ltscale bench loader`: the input pipeline, measured on one set of real-size JPEGs.

Writes ``images`` JPEGs (``width``×``height``, like a resized photo) as an ImageFolder tree and as
ltscale shards, then measures, alternating baseline and candidate (A, B, A, B) in this process
and reporting medians:

- **throughput**: the torch backend (sampler → coalesced reads → Pillow views, decode once) vs a
  plain torchvision ``ImageFolder`` + ``DataLoader`` with the same SimCLR/MoCo v2 augmentation
  (two views, Pillow blur as in the MoCo v2 code), same workers and batch; the DALI CPU pipeline
  vs the torch backend when DALI is installed; 2 workers vs 1;
- **two views vs one** (decode once, crop twice) — in-process, single thread;
- **bytes read / selected bytes** for a γ=100 manifest, global and block shuffle;
- **shard read speed** through the indexed reader (every sample, disk order, coalesced) vs
  ``cat`` of the same shard files to /dev/null (page cache warm for both);
- **shuffle quality**: same-shard pairs per batch relative to an ideal uniform shuffle, for the
  global shuffle, the block shuffle and a webdataset-style stream (shard shuffle + buffer);
- **memory per worker** (PSS from /proc) at the start, middle and end of an epoch.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageFilter

from ltscale.bench.synthetic import write_jpeg_folder
from ltscale.data.augment import make_preset
from ltscale.data.augment_torch import TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.index import ShardIndex
from ltscale.data.loading import LoaderSettings, build_loader
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec, NoiseSpec
from ltscale.data.reader import IndexedReader
from ltscale.data.sampling import EpochSampler
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# --- the baseline: what a user writes today ---------------------------------------------------
class _PilBlur:
    """Gaussian blur on a PIL image with σ ∈ [0.1, 2] (as the MoCo v2 code does it)."""

    def __call__(self, img):
        return img.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))


class _TwoCrops:
    def __init__(self, t):
        self.t = t

    def __call__(self, img):
        return torch.stack([self.t(img), self.t(img)])


def _baseline_loader(root: Path, size: int, batch: int, workers: int):
    from torchvision import datasets
    from torchvision import transforms as T

    aug = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([_PilBlur()], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(str(root), transform=_TwoCrops(aug))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers else None)


# --- helpers ----------------------------------------------------------------------------------
def _epoch(loader, pss_at=None) -> tuple[float, int, list]:
    t, n, pss = time.perf_counter(), 0, []
    total = len(loader)
    for i, batch in enumerate(loader):
        n += len(batch[1])
        if pss_at is not None and i in (0, total // 2, total - 1):
            pss.append(_worker_pss_mb(pss_at))
    return time.perf_counter() - t, n, pss


def _children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _worker_pss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return out


def _alternate(fns: dict, repeats: int) -> dict:
    """Run each function ``repeats`` times in turn (A, B, A, B, …); median seconds and counts."""
    times: dict = {k: [] for k in fns}
    counts: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, n = fn()
            times[name].append(seconds)
            counts[name] = n
    return {k: {"seconds": statistics.median(v), "images": counts[k],
                "img_s": counts[k] / statistics.median(v), "runs": v} for k, v in times.items()}


def _same_shard_ratio(order: np.ndarray, shard_of: np.ndarray, batch: int) -> float:
    """Mean same-shard pairs per batch / the expectation under a uniform shuffle."""
    nb = len(order) // batch
    pairs = 0
    for b in range(nb):
        c = np.bincount(shard_of[order[b * batch:(b + 1) * batch]])
        pairs += int((c * (c - 1) // 2).sum())
    sizes = np.bincount(shard_of)
    n = len(shard_of)
    ideal = batch * (batch - 1) / 2 * float((sizes * (sizes - 1)).sum()) / (n * (n - 1))
    return pairs / nb / ideal


def _stream_order(shard_of: np.ndarray, buffer: int, seed: int) -> np.ndarray:
    """The order a webdataset stream gives: shards shuffled, read sequentially, through a
    shuffle buffer that emits a random element as each new one arrives."""
    rng = np.random.default_rng(seed)
    shards = rng.permutation(shard_of.max() + 1)
    incoming = np.concatenate([np.flatnonzero(shard_of == s) for s in shards])
    buf, out = [], []
    for x in incoming.tolist():
        if len(buf) < buffer:
            buf.append(x)
            continue
        k = int(rng.integers(len(buf)))
        out.append(buf[k])
        buf[k] = x
    out += [buf[i] for i in rng.permutation(len(buf))]
    return np.array(out)


def shuffle_quality(samples: int = 100_000, per_shard: int = 1000, batch: int = 256,
                    buffer: int = 5000, seed: int = 0) -> dict:
    shard_of = np.arange(samples) // per_shard
    res = {}
    for name, kw in (("global", {"shuffle": "global"}),
                     ("block (64 × 16)", {"shuffle": "block", "block_size": 64, "window": 16})):
        s = EpochSampler(samples, batch_size=batch, seed=seed, rows=np.arange(samples), **kw)
        res[name] = _same_shard_ratio(s.global_order(), shard_of, batch)
    res[f"stream (buffer {buffer})"] = _same_shard_ratio(_stream_order(shard_of, buffer, seed),
                                                         shard_of, batch)
    return res


def _decoders(blobs: list[bytes]) -> dict:
    import io

    from PIL import Image

    def pil(draft):
        def run():
            t0 = time.perf_counter()
            for b in blobs:
                img = Image.open(io.BytesIO(b))
                if draft:
                    img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))
                img.convert("RGB").load()
            return time.perf_counter() - t0, len(blobs)
        return run

    fns = {"pillow": pil(False), "pillow_draft_half": pil(True)}
    try:
        from torchvision.io import decode_jpeg

        def tv():
            t0 = time.perf_counter()
            for b in blobs:
                decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
            return time.perf_counter() - t0, len(blobs)
        fns["torchvision_decode_jpeg"] = tv
    except ImportError:
        pass
    return fns


# --- the benchmark ----------------------------------------------------------------------------
def bench_loader(images: int = 600, width: int = 500, height: int = 375, size: int = 224,
                 batch: int = 32, workers: int = 2, repeats: int = 2, dali: bool = True) -> dict:
    torch.set_num_threads(1)
    result: dict = {"images": images, "jpeg": f"{width}x{height}", "size": size, "batch": batch,
                    "workers": workers, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="ltscale-bench-loader-") as tmp:
        tmp = Path(tmp)
        raw_bytes = write_jpeg_folder(tmp / "raw", images, 10, width, height=height)
        result["jpeg_mb"] = raw_bytes / 1e6
        build_shards(open_source("imagefolder", tmp / "raw"), tmp / "shards",
                     source_kind="imagefolder", source_path=str(tmp / "raw"),
                     shard_bytes=8 << 20, workers=workers, progress=False)
        index = ShardIndex.load(tmp / "shards").load_all()
        rows = index.split_ids("train")
        cpu = torch.device("cpu")
        preset = make_preset("simclr", size, 3)

        def ours(n_workers: int, backend: str = "torch"):
            ds = ManifestDataset(index, rows, index.label[rows], TrainViews(preset, 3))
            sampler = EpochSampler(len(ds), batch_size=batch, seed=0)
            return build_loader(ds, sampler, LoaderSettings(backend=backend, workers=n_workers),
                                device=cpu, mean=MEAN, std=STD, preset=preset, channels=3)

        base = _baseline_loader(tmp / "raw", size, batch, workers)
        cand, cand1 = ours(workers), ours(1)
        for ld in (base, cand, cand1):
            _epoch(ld)  # warm-up: workers started, page cache filled
        fns = {"imagefolder": lambda: _epoch(base)[:2], "ltscale_torch": lambda: _epoch(cand)[:2],
               "ltscale_torch_1worker": lambda: _epoch(cand1)[:2]}
        dali_note = None
        if dali:
            try:
                dali_loader = ours(workers, "dali")
                _epoch(dali_loader)
                fns["ltscale_dali_cpu"] = lambda: _epoch(dali_loader)[:2]
            except Exception as exc:  # DALI not installed or not usable here: say so
                dali_note = f"DALI not measured: {exc}"
        result["throughput"] = _alternate(fns, repeats)
        t = result["throughput"]
        result["torch_vs_imagefolder"] = t["ltscale_torch"]["img_s"] / t["imagefolder"]["img_s"]
        result["workers_2_vs_1"] = t["ltscale_torch"]["img_s"] / t["ltscale_torch_1worker"]["img_s"]
        if "ltscale_dali_cpu" in t:
            result["dali_cpu_vs_torch"] = t["ltscale_dali_cpu"]["img_s"] / t["ltscale_torch"]["img_s"]
        result["dali_note"] = dali_note
        fns.clear()
        base = cand = cand1 = dali_loader = None  # noqa: F841 - drop the loaders
        gc.collect()  # persistent workers of the loaders above exit with their iterators
        before = set(_children())
        fresh = ours(workers)
        _epoch(fresh)  # first epoch: the workers start and touch what they will touch
        pids = sorted(set(_children()) - before)
        _, _, pss = _epoch(fresh, pss_at=pids)
        result["worker_pss_mb"] = pss  # second epoch: [start, middle, end] × workers
        del fresh

        # two views vs one, in-process
        reader = IndexedReader(index)
        blobs = [reader.read(int(r)) for r in rows[:300]]
        one = TrainViews(make_preset("simclr", size, 3, views=1), 3)
        two = TrainViews(preset, 3)

        def views_run(v):
            def run():
                t0 = time.perf_counter()
                for i, b in enumerate(blobs):
                    v(b, np.random.default_rng(i))
                return time.perf_counter() - t0, len(blobs)
            return run

        base_ds = _baseline_loader(tmp / "raw", size, batch, 0).dataset

        def baseline_run():
            t0 = time.perf_counter()
            for i in range(len(blobs)):
                base_ds[i]
            return time.perf_counter() - t0, len(blobs)

        vt = _alternate({"one_view": views_run(one), "two_views": views_run(two),
                         "imagefolder_two_views": baseline_run}, repeats + 1)
        result["views"] = vt
        result["two_vs_one_view_time"] = vt["two_views"]["seconds"] / vt["one_view"]["seconds"]
        result["per_sample_ms"] = {k: 1e3 * v["seconds"] / v["images"] for k, v in vt.items()}

        # decoders on the same bytes: Pillow full size, Pillow at half size (draft), torchvision
        result["decode"] = _alternate(_decoders(blobs), repeats + 1)

        # bytes read for a long-tailed manifest: γ = 100, or the largest γ that leaves every
        # class an image (the manifest refuses more: γ ≤ images per class)
        gamma = min(100, images // 10)
        m = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec.parse(f"exp:{gamma}"),
                                               noise=NoiseSpec.parse("none"), seed=0))
        ids, _ = m.rows("labeled")
        selected = int(index.size[ids].sum())
        result["long_tail"] = {"gamma": gamma, "samples": len(ids), "selected_mb": selected / 1e6,
                              "shard_mb": sum((tmp / "shards" / s).stat().st_size
                                              for s in index.shards) / 1e6}
        for mode in ("global", "block"):
            r = IndexedReader(index)
            s = EpochSampler(len(ids), batch_size=batch, seed=0, tail="keep", shuffle=mode,
                             rows=ids, block_size=16, window=4)
            for b in s.batches():
                r.read_many(ids[b.positions])
            result["long_tail"][mode] = {"bytes_ratio": r.bytes_read / selected, "reads": r.reads,
                                        "samples": r.samples}

        # shard read speed: indexed reader (all samples, disk order) vs cat
        shard_files = [str(tmp / "shards" / s) for s in index.shards]
        order = np.lexsort((index.offset, index.shard))

        def read_all():
            r = IndexedReader(index)
            t0 = time.perf_counter()
            for i in range(0, len(order), 256):
                r.read_many(order[i:i + 256])
            r.close()
            return time.perf_counter() - t0, len(order)

        def cat():
            t0 = time.perf_counter()
            subprocess.run(["cat", *shard_files], stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0, len(order)

        cat()
        rt = _alternate({"cat": cat, "indexed_reader": read_all}, repeats + 3)
        total_mb = result["long_tail"]["shard_mb"]
        result["read"] = {k: {"mb_s": total_mb / v["seconds"], **v} for k, v in rt.items()}
        result["read_vs_cat"] = rt["cat"]["seconds"] / rt["indexed_reader"]["seconds"]
    result["shuffle_same_shard_ratio"] = shuffle_quality()
    _print(result)
    return result


def _print(r: dict) -> None:
    t = r["throughput"]
    print(f"{r['images']} JPEGs {r['jpeg']} ({r['jpeg_mb']:.0f} MB), SimCLR/MoCo v2 views at "
          f"{r['size']} px, batch {r['batch']}, {r['workers']} workers, {r['cpus']} CPUs; medians "
          "of alternating runs")
    for k, v in t.items():
        print(f"  {k:24s} {v['img_s']:8.1f} img/s")
    print(f"  torch backend / ImageFolder       : {r['torch_vs_imagefolder']:.2f}x")
    if "dali_cpu_vs_torch" in r:
        print(f"  DALI CPU / torch backend          : {r['dali_cpu_vs_torch']:.2f}x")
    elif r.get("dali_note"):
        print(f"  {r['dali_note']}")
    print(f"  2 workers / 1 worker              : {r['workers_2_vs_1']:.2f}x")
    print(f"  two views / one view (time)       : {r['two_vs_one_view_time']:.2f}x")
    ps = r["per_sample_ms"]
    print(f"  per sample, one thread (ltscale from bytes in memory, ImageFolder opening its file): ltscale two views {ps['two_views']:.2f} ms, "
          f"one view {ps['one_view']:.2f} ms; ImageFolder transform two views "
          f"{ps['imagefolder_two_views']:.2f} ms → {ps['imagefolder_two_views'] / ps['two_views']:.2f}x")
    print("  decode only (1 thread): " + ", ".join(f"{k} {v['img_s']:.0f} img/s"
                                                  for k, v in r["decode"].items()))
    g = r["long_tail"]
    print(f"  γ={g['gamma']} manifest: {g['samples']} samples, {g['selected_mb']:.1f} of "
          f"{g['shard_mb']:.1f} MB; bytes read / selected: global {g['global']['bytes_ratio']:.3f}"
          f" ({g['global']['reads']} reads), block {g['block']['bytes_ratio']:.3f} "
          f"({g['block']['reads']} reads)")
    print(f"  shard read: indexed reader {r['read']['indexed_reader']['mb_s']:.0f} MB/s, cat "
          f"{r['read']['cat']['mb_s']:.0f} MB/s → {r['read_vs_cat']:.2f}x")
    q = ", ".join(f"{k} {v:.2f}" for k, v in r["shuffle_same_shard_ratio"].items())
    print(f"  same-shard pairs per batch / ideal shuffle: {q}")
    print("  worker PSS (MB) at start/middle/end of the 2nd epoch: "
          + " | ".join(", ".join(f"{x:.0f}" for x in p) for p in r["worker_pss_mb"]))
