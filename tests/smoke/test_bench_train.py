"""`ltscale bench train` end to end on CPU at a toy size: the same code path the GPU check runs
(tools/gpu-check.sh: ResNet-50 at 224 px through DALI `mixed`, the torch loader, and the torch
loader with `decode: gpu`)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke


def test_bench_train_reports_every_loader(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ltscale", "bench", "train", "--images", "48", "--size", "16",
         "--backbone", "resnet_tiny", "--batch", "8", "--steps", "2", "--precision", "bf16",
         "--device", "cpu", "--workers", "1", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    torch_run = result["loaders"]["torch"]
    assert torch_run["images_per_s"] > 0 and 0 <= torch_run["data_wait_fraction"] <= 1
    assert torch_run["peak_memory_mb"] > 0 and torch_run["decode"] == "pillow"
    gpu_decode = result["loaders"]["torch-gpu"]  # on a CPU device: torchvision's CPU decoder
    assert gpu_decode["images_per_s"] > 0 and 0 <= gpu_decode["data_wait_fraction"] <= 1
    assert gpu_decode["decode"] == "torchvision-cpu" and result["torch_gpu_over_torch"] > 0
    dali = result["loaders"]["dali"]
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        assert "skipped" in dali
    else:
        assert dali["images_per_s"] > 0 and dali["decode"] == "cpu"
        assert result["dali_over_torch"] > 0
