"""tools/gpu_imports.py, the GPU rehearsal's import check: list parsing, wheel requirements for
the GPU machine's Python, the import trace, and what counts as missing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("gpu_imports", REPO / "tools" / "gpu_imports.py")
gi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gi)


def test_lists_are_read_as_normalised_names(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("# a comment\nPyYAML\ntorch==2.11.0\nTyping_Extensions  # why\n\nnvidia.ml-py\n")
    assert gi.listed(f) == {"pyyaml", "torch", "typing-extensions", "nvidia-ml-py"}


def test_the_committed_image_list_is_the_shared_one():
    shared = REPO.parent / "shared" / "gpu-image-packages.txt"
    if not shared.exists():
        pytest.skip(f"{shared} is not on this machine")
    assert (REPO / "tools" / "gpu-image-packages.txt").read_text() == shared.read_text()


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_wheel_requirements_apply_the_gpu_machines_markers(tmp_path):
    _wheel(tmp_path, "pkg", ["Hjson", "numpy>=1", "pywin32; sys_platform == 'win32'",
                             "tomli; python_version < '3.11'", "rich; extra == 'pretty'",
                             "typing_extensions; python_version >= '3.12'"])
    assert gi.wheel_requirements(tmp_path) == {
        "pkg-1.0-py3-none-any.whl": {"hjson", "numpy", "typing-extensions"}}


def test_problems_name_what_is_neither_on_the_image_nor_carried():
    imported = {"torch": {"torch"}, "deepspeed": {"deepspeed"}, "mlflow": {"mlflow", "mlflow.x"},
                "ltscale": {"ltscale"}}
    found = gi.problems(imported, {"torch"}, {"deepspeed"}, {"deepspeed.whl": {"hjson", "torch"}})
    assert len(found) == 2
    assert found[0].startswith("mlflow: imported (mlflow, mlflow.x") and "gpu-wheels.txt" in found[0]
    assert found[1].startswith("deepspeed.whl: requires hjson")
    assert not gi.problems({"nvidia-dali-cuda130": {"nvidia.dali"}}, set(), set(), {})  # optional


def test_the_trace_names_the_distributions_a_process_imported(tmp_path):
    env = os.environ | {"LTSCALE_IMPORT_TRACE": str(tmp_path),
                        "PYTHONPATH": str(REPO / "tools" / "import_trace")}
    subprocess.run([sys.executable, "-c", "import yaml, json, email.parser"], env=env, check=True,
                   timeout=60)
    (trace,) = tmp_path.glob("*.json")
    dists = {gi.normalise(d) for d in json.loads(trace.read_text())["dists"]}
    assert "pyyaml" in dists  # a third-party module, by its distribution's name
    assert not any(d in dists for d in ("json", "email"))  # the standard library is not one


def test_every_wheel_the_gpu_call_carries_is_listed_and_the_lists_do_not_overlap():
    wheels = gi.listed(REPO / "tools" / "gpu-wheels.txt")
    image = gi.listed(REPO / "tools" / "gpu-image-packages.txt")
    assert {"deepspeed", "pydantic", "pydantic-core"} <= wheels
    assert not wheels & image  # nothing carried that the image has (it would shadow it)
