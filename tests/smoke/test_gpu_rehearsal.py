"""`bash tools/gpu-check.sh --rehearse`: the GPU call rehearsed on CPU, end to end. The carried
wheels install offline for the GPU machine's Python; with only the image's packages and those
wheels, the gpu tier is collected, its launches run at CPU size (DeepSpeed included) and `ltscale
bench train` at a toy size; the device call to make is printed. A failure here is what would
have wasted the first minutes on a GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke
REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_call_rehearsed_on_cpu(tmp_path):
    if not any((REPO / ".whl").glob("*.whl")):  # tools/test.sh fetches them; a bare pytest too
        subprocess.run(["bash", "tools/gpu-wheels.sh"], cwd=REPO, check=True, timeout=600)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "tools/gpu-check.sh", "--rehearse"], cwd=REPO,
                          env=os.environ | {"GPU_CHECK_OUT": str(out)}, capture_output=True,
                          text=True, timeout=1200)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-5000:]
    summary = (out / "summary.txt").read_text()
    assert "phase wheels: exit 0" in summary and "phase imports: exit 0" in summary, summary
    call = next(line for line in summary.splitlines() if "device call: run(" in line)
    assert 'command="bash tools/gpu-check.sh"' in call and '[".whl"]' in call
    assert len(call) < 2000
    assert "every one on the image or carried: yes" in text and "deepspeed" in text
    assert len(list(out.iterdir())) <= 8  # the call's folder comes back whole
