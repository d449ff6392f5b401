"""What every stage needs: the recipe, device, shard index, manifest and tracker."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltscale.config.schema import Recipe
from ltscale.core.errors import DataError
from ltscale.core.version import __version__
from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest, build_manifest
from ltscale.data.manifest_spec import (
    EvalSelection,
    ImbalanceSpec,
    ManifestSpec,
    NoiseSpec,
    UnlabeledSpec,
)
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from ltscale.engine.backend import LocalBackend
from ltscale.track import NullTracker

logger = logging.getLogger(__name__)


@dataclass
class Context:
    recipe: Recipe
    index: ShardIndex
    manifest: Manifest
    manifest_path: Path
    out: Path
    backend: LocalBackend
    tracker: object = field(default_factory=NullTracker)
    progress: bool = True

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def tags(self, stage: str) -> dict:
        """The stage run's tags; the manifest's (``track.tracker.DATASET_TAGS``) also make the
        tracker log it as the run's dataset input."""
        return {"ltscale.stage": stage, "ltscale.version": __version__,
                "ltscale.git_commit": git_commit(), "ltscale.manifest_hash": self.manifest.hash,
                "ltscale.index_hash": self.manifest.header["index_hash"],
                "ltscale.dataset": self.dataset_name(),
                "ltscale.shards": str(Path(self.recipe.data.shards).resolve())}

    def dataset_name(self) -> str:
        """The manifest in words: the dataset folder, its imbalance and noise."""
        f = spec_fields(self.manifest.spec)
        return f"{Path(self.recipe.data.shards).name} {f['imbalance']} {f['noise']}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def manifest_spec(recipe: Recipe) -> ManifestSpec:
    m = recipe.manifest
    return ManifestSpec(split=m.split, imbalance=ImbalanceSpec.parse(m.imbalance, m.class_order),
                        noise=NoiseSpec.parse(m.noise), seed=m.seed, max_per_class=m.max_per_class,
                        few_labels=m.few_labels, unlabeled=UnlabeledSpec(**m.unlabeled.model_dump()),
                        val=EvalSelection.parse(m.val), test=EvalSelection.parse(m.test))


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def spec_fields(spec: ManifestSpec) -> dict:
    """The recipe's ``manifest`` keys that describe ``spec`` (the inverse of ``manifest_spec``)."""
    imb, noise = spec.imbalance, spec.noise
    imbalance = {"exp": f"exp:{_number_text(imb.ratio)}",
                 "step": f"step:{_number_text(imb.ratio)}:{_number_text(imb.mu)}",
                 "pareto": f"pareto:{_number_text(imb.ratio)}:{_number_text(imb.alpha)}",
                 }.get(imb.profile, imb.profile)
    sel = lambda e: None if e is None else (  # noqa: E731
        e.split if e.per_class is None else f"{e.split}:{e.per_class}")
    return {"split": spec.split, "imbalance": imbalance, "class_order": imb.order,
            "noise": noise.text(), "seed": spec.seed, "max_per_class": spec.max_per_class,
            "few_labels": spec.few_labels, "unlabeled": dataclasses.asdict(spec.unlabeled),
            "val": sel(spec.val), "test": sel(spec.test)}


def effective_recipe(recipe: Recipe) -> Recipe:
    """With ``manifest.file``, the recipe whose ``manifest`` section describes that file (its
    recorded spec) instead of the unused imbalance/noise defaults: params, reports and
    ``ltscale compare --group-by manifest.*`` then say what the run really trained on."""
    if not recipe.manifest.file:
        return recipe
    from ltscale.config.schema import ManifestCfg

    spec = Manifest.load(recipe.manifest.file).spec
    r = recipe.model_copy(deep=True)
    r.manifest = ManifestCfg(file=recipe.manifest.file, **spec_fields(spec))
    return r


def check_output_dir(recipe: Recipe) -> None:
    """A run writes its manifest, checkpoints and reports under ``output_dir``: never into the
    dataset (it would no longer be a folder ltscale can prove it wrote) or the raw source."""
    import os

    out = Path(os.path.realpath(recipe.output_dir))
    for key, given in (("data.shards", recipe.data.shards),
                       ("data.source.path", recipe.data.source.path)):
        inside = Path(os.path.realpath(given))
        if out == inside or out.is_relative_to(inside):
            raise DataError(f"output_dir {recipe.output_dir} lies in {key} {given}; a run writes "
                            "its files outside the data it reads: choose another output_dir")


def shards_source(shards: Path) -> dict | None:
    """The source ``card.json`` records for the dataset at ``shards`` (``{"kind", "path"}``); None
    when the card is missing, unreadable or records none."""
    try:
        src = json.loads((Path(shards) / "card.json").read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(src, dict) or not src.get("kind") or not src.get("path"):
        return None
    return {"kind": str(src["kind"]), "path": str(src["path"])}


def _same_source(built: dict | None, recipe: Recipe) -> bool:
    src = recipe.data.source
    return built is not None and built["kind"] == src.kind and (
        os.path.realpath(built["path"]) == os.path.realpath(src.path))


_UNRECORDED_WARNED: set[str] = set()


def check_provenance(shards: Path, recipe: Recipe) -> None:
    """Existing shards are trained on only when built from the recipe's ``data.source``: else the
    recipe, the logged params and the reports would name a source the run never read. A card
    that records no source is used as given, with a warning that says so."""
    built, src = shards_source(shards), recipe.data.source
    if built is None:
        if str(shards) not in _UNRECORDED_WARNED:
            _UNRECORDED_WARNED.add(str(shards))
            logger.warning(f"data.shards {shards}: its card.json records no source, so nothing "
                           f"shows it was built from data.source {src.kind} {src.path}, which "
                           "this run logs; rebuild it from that source to be sure")
        return
    if not _same_source(built, recipe):
        raise DataError(f"data.shards {shards} was built from {built['kind']} {built['path']}, "
                        f"not from the recipe's data.source {src.kind} {src.path}; the run would "
                        "record a source it never read: set data.source to the shards' source "
                        "or data.shards to a new folder (built from data.source)")


def _usable(shards: Path, recipe: Recipe) -> bool:
    """Whether ``shards`` holds an index this version reads. Shards an older release built from
    the recipe's own source are rebuilt; anything else is left alone and reported."""
    if not (shards / "index.npz").exists():
        return False
    try:
        ShardIndex.load(shards)
        return True
    except DataError as exc:
        if _same_source(shards_source(shards), recipe):
            logger.warning(f"rebuilding {shards} from {recipe.data.source.path} ({exc})")
            return False
        raise


def ensure_shards(recipe: Recipe, progress: bool = True) -> ShardIndex:
    """The recipe's shards: built from ``data.source`` when absent, else reused only when built
    from it (``check_provenance``)."""
    shards = Path(recipe.data.shards)
    if _usable(shards, recipe):
        check_provenance(shards, recipe)
    else:
        src = recipe.data.source
        build_shards(open_source(src.kind, src.path, **src.options), shards, source_kind=src.kind,
                     source_path=src.path, shard_bytes=recipe.data.shard_bytes,
                     overwrite=shards.exists(), progress=progress)
    return ShardIndex.load(shards)


def create_backend(recipe: Recipe) -> LocalBackend:
    """The execution backend the recipe's ``engine`` section asks for."""
    e = recipe.engine
    kind = e.backend
    if kind == "auto":
        from ltscale.core.dist_env import DistEnv

        kind = "ddp" if DistEnv.from_env().world_size > 1 else "local"
    if kind == "ddp":
        from ltscale.engine.ddp import DDPBackend

        return DDPBackend(recipe.device, precision=e.precision, channels_last=e.channels_last,
                          compile=e.compile, dist_backend=e.dist_backend, sync_bn=e.sync_bn,
                          timeout_s=e.timeout_s)
    if kind == "deepspeed":
        from ltscale.engine.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(recipe.device, precision=e.precision,
                                channels_last=e.channels_last, compile=e.compile,
                                zero_stage=e.zero_stage, gradient_clipping=e.gradient_clipping,
                                timeout_s=e.timeout_s)
    return LocalBackend(recipe.device, precision=e.precision, channels_last=e.channels_last,
                        compile=e.compile)


def make_context(recipe: Recipe, tracker=None, progress: bool = True) -> Context:
    """Build shards if absent, then the recipe's manifest (saved under the output directory)."""
    recipe = effective_recipe(recipe)
    check_output_dir(recipe)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = create_backend(recipe)
    if backend.is_main:  # one rank builds missing shards while the others wait at the barrier
        ensure_shards(recipe, progress)
    backend.barrier()
    index = ensure_shards(recipe, progress)
    if recipe.manifest.file:
        manifest = Manifest.load(recipe.manifest.file)
        manifest.check_index(index)
    else:
        manifest = build_manifest(index, manifest_spec(recipe))
    path = out / "train.manifest.npz"
    manifest.save(path)
    return Context(recipe, index, manifest, path, out, backend, tracker or NullTracker(), progress)
