"""Which Python distributions the GPU call needs, found by running it on CPU: the rehearsal's
import check (issue 30). ``bash tools/gpu-check.sh --rehearse`` and a smoke test run it.

The GPU call (``tools/gpu-check.sh``) runs the gpu test tier and ``ltscale bench train``. Here,
without CUDA, the same code runs under an import trace (``tools/import_trace/sitecustomize.py``,
which every Python process of the run loads, torchrun's ranks included):

- ``pytest --collect-only -m gpu tests/gpu`` (what the tier imports to start);
- the tier's launches at CPU size: the matrix worker on every backend (local; DDP and DeepSpeed
  on 2 gloo ranks), one method, fp32 (the modules its CUDA runs import, CUDA aside);
- ``ltscale bench train`` at a toy size with in-process loading.

Every distribution a traced process imported must be on the image's list
(``tools/gpu-image-packages.txt``, a copy of ``../shared/gpu-image-packages.txt``) or among the
wheels ``tools/gpu-wheels.sh`` fetches (``tools/gpu-wheels.txt``); so must every requirement of
those wheels (their ``Requires-Dist``, for Python 3.12 on Linux x86-64). ``OPTIONAL`` names the
few whose tests skip, saying so, where they are absent. Exit 1 lists what would be missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
# absent on the GPU machine by design: their tests skip with the reason given
OPTIONAL = {"nvidia-dali-cuda130": "DALI's ~1 GB wheel cannot be carried; its gpu test skips"}
# the machine the wheels are for (tools/gpu-image-packages.txt: Python 3.12 on x86-64 Linux)
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython",
          "extra": ""}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    """The distribution names of a list file: one a line, ``#`` comments, ``==version`` kept out."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalise(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]))
    return names


def traced_commands() -> list[list[str]]:
    matrix = (
        "import sys, tempfile\n"
        "from pathlib import Path\n"
        "from tests.matrix.cells import backend_names\n"
        "from tests.matrix.harness import Launch, make_matrix_data\n"
        "root = Path(tempfile.mkdtemp(prefix='ltscale-rehearse-'))\n"
        "data = make_matrix_data(root / 'data')\n"
        "for b in backend_names():\n"
        "    launch = Launch(data, root / b, b, 'fp32', 'checks', methods=['simsiam'])\n"
        "    if launch.run():\n"
        "        sys.exit(f'{b}: the matrix worker failed:\\n{launch.output()}')\n")
    return [
        ["PYTHON", "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests/gpu",
         "-p", "no:cacheprovider"],
        ["PYTHON", "-c", matrix],
        ["PYTHON", "-m", "ltscale", "bench", "train", "--images", "16", "--size", "32",
         "--backbone", "resnet_tiny", "--batch", "8", "--steps", "2", "--epochs", "1",
         "--precision", "fp32", "--device", "cpu", "--workers", "0",
         "--loaders", "torch,torch-gpu"],
    ]


def image_like_env(root: Path, keep: set[str], wheels: Path | None, log=print) -> Path:
    """A virtual environment at ``root`` that sees only the distributions of ``keep`` from this
    one (their files linked, metadata included), the pure-Python wheels of ``wheels`` installed
    offline in place of their local copies: the GPU machine's package set, as far as this
    machine has it. Returns its Python."""
    import importlib.metadata as md
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"]).resolve()
    pure = {normalise(w.name.split("-")[0]): w for w in (wheels.glob("*-py3-none-any.whl")
                                                          if wheels else [])}
    linked = 0
    for dist in md.distributions():
        name = normalise(dist.metadata["Name"])
        base = Path(dist.locate_file("")).resolve()
        if name not in keep or name in pure or base != here:
            continue
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue  # scripts outside site-packages; bytecode is made again
            src, dst = base / f, site / f
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(src, dst)
                linked += 1
    if pure:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), *map(str, pure.values())],
                       check=True)
    log(f"gpu-imports: image-like environment at {root}: {linked} files of this machine's "
        f"kept distributions linked; installed offline from the carried wheels: "
        f"{', '.join(sorted(pure)) or 'none'}")
    return python


def trace(python: Path, commands: list[list[str]], log=print) -> dict[str, set[str]]:
    """Run ``commands`` (``python`` in place of their ``PYTHON``) under the import trace;
    {distribution: modules imported} over every process."""
    with tempfile.TemporaryDirectory(prefix="ltscale-import-trace-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env |= {"LTSCALE_IMPORT_TRACE": tmp, "OMP_NUM_THREADS": "1",
                "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                "PYTHONPATH": os.pathsep.join([str(TOOLS / "import_trace"), str(REPO)])}
        for cmd in commands:
            cmd = [str(python) if c == "PYTHON" else c for c in cmd]
            log(f"gpu-imports: running {' '.join(cmd[1:4])} …")
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=900)
            if proc.returncode:
                raise SystemExit(f"gpu-imports: with only the GPU machine's packages, "
                                 f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                                 f"{(proc.stdout + proc.stderr)[-4000:]}")
        found: dict[str, set[str]] = {}
        traces = list(Path(tmp).glob("*.json"))
        if not traces:
            raise SystemExit("gpu-imports: no process wrote an import trace (is "
                             "tools/import_trace first on PYTHONPATH?)")
        for path in traces:
            for dist, modules in json.loads(path.read_text())["dists"].items():
                found.setdefault(normalise(dist), set()).update(modules)
    return found


def wheel_requirements(folder: Path) -> dict[str, set[str]]:
    """{wheel file: the distributions it requires on the target machine}."""
    from packaging.requirements import Requirement

    out = {}
    for whl in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            headers = Parser().parsestr(z.read(meta).decode())
        needs = set()
        for text in headers.get_all("Requires-Dist") or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(TARGET):
                needs.add(normalise(req.name))
        out[whl.name] = needs
    return out


def problems(imported: dict[str, set[str]], image: set[str], wheels: set[str],
             requirements: dict[str, set[str]]) -> list[str]:
    have = image | wheels | set(OPTIONAL) | {"ltscale"}
    lines = [f"{dist}: imported ({', '.join(sorted(mods)[:3])}…) but neither on the image "
             f"nor in tools/gpu-wheels.txt"
             for dist, mods in sorted(imported.items()) if dist not in have]
    lines += [f"{whl}: requires {dist}, which is neither on the image nor in "
              f"tools/gpu-wheels.txt" for whl, needs in requirements.items()
              for dist in sorted(needs - have)]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", default=str(REPO / ".whl"),
                    help="folder of the carried wheels: the pure-Python ones are installed from "
                         "it, and every wheel's requirements are checked")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the findings")
    args = ap.parse_args(argv)
    image, wheels = listed(TOOLS / "gpu-image-packages.txt"), listed(TOOLS / "gpu-wheels.txt")
    folder = Path(args.wheels)
    folder = folder if folder.is_dir() and any(folder.glob("*.whl")) else None
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="ltscale-rehearse-env-") as tmp:
        python = image_like_env(Path(tmp), image | wheels | {"ltscale"}, folder, log=say)
        imported = trace(python, traced_commands(), log=say)
    requirements = wheel_requirements(folder) if folder else {}
    found = problems(imported, image, wheels, requirements)
    print(f"gpu-imports: {len(imported)} distributions imported, every one on the image or "
          f"carried: {'yes' if not found else 'NO'}; carried as wheels: "
          f"{', '.join(sorted(d for d in imported if d in wheels)) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"imported": {d: sorted(m) for d, m in sorted(imported.items())},
             "requirements": {w: sorted(n) for w, n in requirements.items()},
             "problems": found}, indent=1))
    for line in found:
        print(f"gpu-imports: missing on the GPU machine: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
