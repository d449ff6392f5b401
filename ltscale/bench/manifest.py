"""`ltscale bench manifest`: time and peak memory of `manifest make` on a large index.

The index is written to disk first; the measurement then runs in a fresh Python process that
loads it and builds and saves the manifest, so the peak resident memory (VmHWM) is that of a
real `manifest make` and not of the benchmark's own set-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ltscale.bench.synthetic import synthetic_index

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()

def hwm_mb():  # peak RSS of this process image (VmHWM restarts at exec, ru_maxrss does not)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec, NoiseSpec
imported = time.perf_counter()
rss0 = hwm_mb()
t = time.perf_counter()
index = ShardIndex.load(sys.argv[1])
spec = ManifestSpec(imbalance=ImbalanceSpec.parse(sys.argv[3]), noise=NoiseSpec.parse(sys.argv[4]),
                    seed=0)
m = build_manifest(index, spec)
m.save(sys.argv[2])
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "import_seconds": imported - t0,
                  "peak_rss_mb": hwm_mb(),
                  "rss_before_mb": rss0, "selected": int(len(m)),
                  "noise_rate": m.header["noise_rate"]}))
"""


def bench_manifest(samples: int = 1_000_000, classes: int = 1000, imbalance: str = "exp:100",
                   noise: str = "sym:0.4", repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="ltscale-bench-") as tmp:
        synthetic_index(samples, classes).save(Path(tmp))
        runs = []
        for r in range(repeats):
            out = subprocess.run([sys.executable, "-c", _CHILD, tmp, f"{tmp}/m{r}.npz", imbalance,
                                  noise], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout))
    runs.sort(key=lambda r: r["seconds"])
    best, median = runs[0], runs[len(runs) // 2]
    result = {"samples": samples, "classes": classes, "imbalance": imbalance, "noise": noise,
              "median_seconds": median["seconds"], "best_seconds": best["seconds"],
              "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
              "rss_after_imports_mb": median["rss_before_mb"], "selected": median["selected"]}
    print(f"manifest make over {samples:,} samples / {classes} classes ({imbalance}, {noise}): "
          f"median {median['seconds']:.3f} s (best {best['seconds']:.3f} s) for load + build + "
          f"save; peak RSS {result['peak_rss_mb']:.0f} MB for the whole process "
          f"({median['rss_before_mb']:.0f} MB after imports); {median['selected']:,} selected")
    return result
