"""The code's shape: no module of ltscale grows past 400 lines (one concept per file), and imports
only run downwards through a declared order of layers (docs/architecture.md)."""

from pathlib import Path

import ltscale
from tests.unit.core.test_import_cycles import _edges, _modules

LIMIT = 400

# bottom → top; a module may import from its own layer and the layers below it, never above.
# A layer is a list of sub-packages (or modules) of ltscale.
LAYERS = [
    ("core: errors, atomic writes, hashing, locks, logs, progress, the Section base, rank env",
     ["core"]),
    ("data: sources, shards, index, manifests, sampler, augmentation, loaders", ["data"]),
    ("networks and losses: backbones, heads and their files; loss maths", ["models", "losses"]),
    ("engine: loop, backends, optimizers, checkpoints", ["engine"]),
    ("methods: pretraining methods and the supervised one", ["methods"]),
    ("config: the recipe schema over the registries", ["config"]),
    ("fine-tuning mechanisms: feature cache, head training, end-to-end, pseudo-labels",
     ["finetune"]),
    ("tracking", ["track"]),
    ("evaluation: metrics, reports, comparison", ["eval"]),
    ("launch: torchrun/SLURM, submitit", ["launch"]),
    ("stages: the only code that takes the run context", ["stages"]),
    ("entry points: pipeline, export, benchmarks, the CLI",
     ["pipeline", "export", "resolve", "bench", "cli", "__main__", "ltscale"]),
]


def _layer_of(module: str, layers=LAYERS) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for rank, (_, members) in enumerate(layers):
        if key in members:
            return rank
    raise AssertionError(f"{module}: its package {key!r} is in no layer of tests/unit/"
                         "core/test_layout.py (add it where it belongs)")


def upward_arrows(edges: dict[str, set[str]], layers=LAYERS) -> list[str]:
    return sorted(f"{a} → {b} ({layers[_layer_of(a, layers)][0].split(':')[0]} imports "
                  f"{layers[_layer_of(b, layers)][0].split(':')[0]})"
                  for a, targets in edges.items() for b in targets
                  if _layer_of(b, layers) > _layer_of(a, layers))


def test_no_module_is_longer_than_the_limit():
    root = Path(ltscale.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > LIMIT}
    assert not long, f"modules over {LIMIT} lines (split them by concept): {long}"


def test_the_checker_finds_an_upward_arrow():
    layers = [("low", ["a"]), ("high", ["b"])]
    edges = {"x.a.m": {"x.b.n"}, "x.b.n": {"x.a.m"}, "x.a.k": {"x.a.m"}}
    assert upward_arrows(edges, layers) == ["x.a.m → x.b.n (low imports high)"]


def test_imports_only_run_down_the_layers():
    arrows = upward_arrows(_edges(_modules()))
    assert not arrows, ("imports from a lower layer up to a higher one (function-level imports "
                        "included; move the definition down or the caller up):\n"
                        + "\n".join(arrows))


# the stage modules: each runs one stage for the run context; the pipeline composes them. The
# other modules of stages/ are what stages share (context, loaders, networks, fingerprints,
# budgets, typed results, evaluation) or a part of one stage (endtoend: finetune's full mode).
STAGE_MODULES = {"pretrain", "finetune", "selftrain", "eval_head"}


def stage_arrows(edges: dict[str, set[str]], prefix: str = "ltscale.stages.") -> list[str]:
    """Imports of a stage module by any other module of stages/ (stages are siblings)."""
    return sorted(f"{a} → {b}" for a, targets in edges.items() if a.startswith(prefix)
                  for b in targets
                  if b.startswith(prefix) and b.removeprefix(prefix) in STAGE_MODULES)


def test_the_checker_finds_a_stage_built_on_another():
    edges = {"ltscale.stages.selftrain": {"ltscale.stages.pretrain", "ltscale.stages.loaders"},
             "ltscale.stages.finetune": {"ltscale.stages.endtoend"},
             "ltscale.pipeline": {"ltscale.stages.finetune"}}
    assert stage_arrows(edges) == ["ltscale.stages.selftrain → ltscale.stages.pretrain"]


def test_stages_are_siblings():
    root = Path(ltscale.__file__).parent / "stages"
    assert STAGE_MODULES <= {p.stem for p in root.glob("*.py")}
    arrows = stage_arrows(_edges(_modules()))
    assert not arrows, ("a stage built on another stage (move what they share into a module "
                        "of stages/ that is not a stage, or compose them in pipeline.py):\n"
                        + "\n".join(arrows))
