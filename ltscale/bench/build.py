"""`ltscale bench build`: `data build` throughput against a plain `tarfile` copy of the same files.

Writes a folder of real-size JPEGs, then alternates (A, B, A, B, ...) a plain ``tarfile`` copy of
every file into one tar (the floor any shard writer pays) and ``build_shards`` of the same folder
with N workers, and reports medians in MB/s and images/s and their ratio.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from ltscale.bench.synthetic import write_jpeg_folder
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source


def _tar_copy(root: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        for path in sorted(root.rglob("*.jpg")):
            tar.add(path, arcname=str(path.relative_to(root)))


def bench_build(images: int = 4000, classes: int = 40, size: int = 256, workers: int = 0,
                shard_size: int = 16 << 20, repeats: int = 3) -> dict:
    workers = workers or min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="ltscale-bench-") as tmp:
        tmp = Path(tmp)
        total = write_jpeg_folder(tmp / "raw", images, classes, size)
        timings = {"tarfile": [], "ltscale": []}
        for r in range(repeats):
            t = time.perf_counter()
            _tar_copy(tmp / "raw", tmp / f"copy{r}.tar")
            timings["tarfile"].append(time.perf_counter() - t)
            (tmp / f"copy{r}.tar").unlink()
            t = time.perf_counter()
            build_shards(open_source("imagefolder", tmp / "raw"), tmp / f"shards{r}",
                         source_kind="imagefolder", source_path=str(tmp / "raw"),
                         shard_bytes=shard_size, workers=workers, progress=False)
            timings["ltscale"].append(time.perf_counter() - t)
            shutil.rmtree(tmp / f"shards{r}")
    med = {k: statistics.median(v) for k, v in timings.items()}
    mb = total / 1e6
    result = {"images": images, "megabytes": mb, "workers": workers, "cpus": os.cpu_count(),
              "shard_bytes": shard_size,
              "tarfile_mb_s": mb / med["tarfile"], "tarfile_img_s": images / med["tarfile"],
              "ltscale_mb_s": mb / med["ltscale"], "ltscale_img_s": images / med["ltscale"],
              "ratio": med["tarfile"] / med["ltscale"], "runs": timings}
    print(f"{images} JPEGs ({mb:.1f} MB, {size}px), median of {repeats} alternating runs:\n"
          f"  plain tarfile copy : {result['tarfile_mb_s']:7.1f} MB/s {result['tarfile_img_s']:8.0f} img/s\n"
          f"  ltscale data build : {result['ltscale_mb_s']:7.1f} MB/s {result['ltscale_img_s']:8.0f} img/s"
          f"  ({workers} workers, {shard_size >> 20} MB shards, index + card + checksums included)\n"
          f"  ratio ltscale/tarfile: {result['ratio']:.2f}x")
    return result
