"""`ltscale bench loader` end to end at a toy size (every measurement it makes, seconds here):
it broke once without a test when the manifest began refusing γ above the images per class."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke


def test_bench_loader_measures_every_part_on_a_tiny_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ltscale", "bench", "loader", "--images", "40", "--width", "64",
         "--height", "48", "--size", "32", "--batch", "8", "--workers", "1", "--repeats", "1",
         "--no-dali", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["torch_vs_imagefolder"] > 0 and r["workers_2_vs_1"] > 0
    assert all(v["img_s"] > 0 for v in r["throughput"].values())
    # 4 images per class: the long-tailed manifest takes the largest γ that keeps every class
    lt = r["long_tail"]
    assert lt["gamma"] == 4 and 0 < lt["samples"] < 40
    assert lt["global"]["bytes_ratio"] >= 1.0 and lt["block"]["bytes_ratio"] >= 1.0
    assert "dali_cpu_vs_torch" not in r
