"""`ltscale bench scale`: every stage at fractions of the real long-tailed datasets.

For each dataset (ImageNet-LT, iNaturalist 2018, ImageNet-1k class-count profiles, see
``bench.profiles``) and fraction f (every (1/f)-th class of the profile: samples and classes
both scale with f), each stage's inputs are made (not timed), then the stage runs once and is
timed with its peak memory. Memory: the rise of this process's resident-set high-water mark
(VmHWM, reset before the stage through ``/proc/self/clear_refs``) over its RSS at the start;
child processes (shard writers, loader workers) are not in it, the loader's workers get their
own PSS column. Data stages (real JPEG shards) run only up to ``max_images`` samples; component
stages run the stage's code on synthetic arrays at every size (see ``bench.scale_stages``).

The growth exponent of a (dataset, stage) is the slope of log time against log size between its
smallest and largest measured size: 1 is linear, 2 quadratic.
"""

from __future__ import annotations

import ctypes
import gc
import math
import tempfile
import time
from pathlib import Path

from ltscale.bench.profiles import DATASETS, dataset_counts
from ltscale.bench.scale_stages import STAGES, Workspace

DEFAULT_FRACTIONS = (0.1, 0.3, 1.0)
QUICK_FRACTIONS = (0.005, 0.01)
DEFAULT_MAX_IMAGES = 50_000
QUICK_STAGES = tuple(STAGES)


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _trim() -> None:
    """Hand freed heap memory back to the OS, so the next stage's peak starts from what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure(run, ws: Workspace) -> dict:
    """Seconds and peak memory of ``run(ws)``, plus what it returns."""
    gc.collect()
    _trim()
    reset = _reset_peak()
    start = _status_mb("VmRSS")
    t = time.perf_counter()
    extra = run(ws) or {}
    seconds = time.perf_counter() - t
    peak = _status_mb("VmHWM")
    return {"seconds": seconds, "peak_mb": peak - start if reset else peak,
            "memory": "VmHWM rise" if reset else "VmHWM of the process", **extra}


def exponent(rows: list[dict], key: str = "seconds") -> float | None:
    """Slope of log ``key`` vs log size between the smallest and largest measured size."""
    ok = [r for r in rows if r.get(key) is not None and r[key] > 0]
    if len(ok) < 2:
        return None
    lo, hi = min(ok, key=lambda r: r["size"]), max(ok, key=lambda r: r["size"])
    if hi["size"] == lo["size"]:
        return None
    return math.log(hi[key] / lo[key]) / math.log(hi["size"] / lo["size"])


def bench_scale(datasets=tuple(DATASETS), fractions=DEFAULT_FRACTIONS, stages=tuple(STAGES),
                max_images: int = DEFAULT_MAX_IMAGES, quick: bool = False, steps: int = 4,
                root: str | None = None, threads: int | None = 1, log=print) -> dict:
    """``threads``: torch intra-op threads (1 by default: on a shared machine spinning threads
    that wait for a busy core make small tensor ops tens of times slower; None: torch's)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    unknown = [s for s in stages if s not in STAGES] + [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"bench scale: unknown stage or dataset {unknown}; stages "
                         f"{', '.join(STAGES)}; datasets {', '.join(DATASETS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ltscale-bench-scale-", dir=root) as tmp:
        for dataset in datasets:
            for fraction in sorted(fractions):
                counts = dataset_counts(dataset, fraction)
                ws = Workspace(dataset, fraction, counts, Path(tmp) / f"{dataset}-{fraction:g}",
                               quick=quick, steps=steps)
                ws.root.mkdir(parents=True)
                for stage in stages:
                    prepare, run, kind = STAGES[stage]
                    row = {"dataset": dataset, "fraction": fraction, "stage": stage,
                           "kind": kind, "samples": ws.samples, "classes": ws.classes,
                           "size": ws.samples}
                    if kind == "data" and ws.samples > max_images:
                        row.update(seconds=None, peak_mb=None,
                                   note=f"skipped: {ws.samples:,} > --max-images {max_images:,}")
                    else:
                        t = time.perf_counter()
                        prepare(ws)
                        row["prepare_seconds"] = time.perf_counter() - t
                        row.update(measure(run, ws))
                    rows.append(row)
                    log(format_row(row))
                ws.state.clear()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["stage"]), []).append(r)
    exponents = [{"dataset": d, "stage": s, "time_exponent": exponent(g),
                  "memory_exponent": exponent(g, "peak_mb"),
                  "sizes": sorted({r["size"] for r in g if r.get("seconds") is not None})}
                 for (d, s), g in groups.items()]
    return {"rows": rows, "exponents": exponents}


def format_row(r: dict) -> str:
    if r.get("seconds") is None:
        return f"{r['dataset']:12s} {r['fraction']:6.3g} {r['stage']:9s} {r.get('note', '')}"
    pss = f" worker PSS {r['worker_pss_mb']:.0f} MB" if r.get("worker_pss_mb") else ""
    return (f"{r['dataset']:12s} {r['fraction']:6.3g} {r['stage']:9s} n={r['size']:>9,} "
            f"C={r['classes']:>5,} {r['seconds']:9.3f} s {r['peak_mb']:8.1f} MB{pss}")


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    """The per-size table and the exponent table, as Markdown."""
    out = ["| dataset | stage | fraction | n | classes | seconds | peak MB | worker PSS MB | "
           "note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        out.append(f"| {r['dataset']} | {r['stage']} | {r['fraction']:g} | {r['size']:,} | "
                   f"{r['classes']:,} | {_num(r.get('seconds'), '.3f')} | "
                   f"{_num(r.get('peak_mb'), '.1f')} | {_num(r.get('worker_pss_mb'), '.0f')} | "
                   f"{r.get('note', '')} |")
    out += ["", "| dataset | stage | time exponent | memory exponent | sizes |",
            "|---|---|---|---|---|"]
    for e in result["exponents"]:
        out.append(f"| {e['dataset']} | {e['stage']} | {_num(e['time_exponent'], '.2f')} | "
                   f"{_num(e['memory_exponent'], '.2f')} | "
                   f"{', '.join(f'{s:,}' for s in e['sizes'])} |")
    return "\n".join(out) + "\n"
