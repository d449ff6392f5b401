"""The stages `ltscale bench scale` times, each a (prepare, run) pair over a ``Workspace``.

``prepare`` makes the stage's inputs (not timed); ``run`` is the measured work. Data stages work
on real JPEG shards written for the workspace; component stages call the stage's own code on
synthetic arrays of the real size (random features, random logits, synthetic index rows), which
is how the 100 % sizes stay feasible on a small machine.
"""

from __future__ import annotations

import gc
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ltscale.bench.loader import _children, _worker_pss_mb
from ltscale.bench.profiles import labels_from_counts
from ltscale.bench.synthetic import synthetic_index, write_jpeg_folder

IMAGE_SIZE = 32
FEATURE_DIM = 128  # SBCL's projection and the kNN monitor's bank rows
HEAD_DIM = 64      # cached features for the linear head (kept small so 1.28 M rows fit in time)
KNN_QUERIES = 2000  # the recipe default (pretrain.knn.queries)
TEST_PER_CLASS = {"imagenet_lt": 50, "inat2018": 3, "imagenet1k": 50}  # the real test splits
COMPARE_RUNS = 300


@dataclass
class Workspace:
    dataset: str
    fraction: float
    counts: np.ndarray          # images per class, most first
    root: Path
    quick: bool = False
    steps: int = 4              # pretraining steps in the capped epoch
    state: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    @property
    def classes(self) -> int:
        return len(self.counts)

    @property
    def labels(self) -> np.ndarray:
        if "labels" not in self.state:
            self.state["labels"] = labels_from_counts(self.counts)
        return self.state["labels"]

    def fresh(self, name: str) -> Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        return path


# --- data stages: real JPEG shards --------------------------------------------------------------
def _images(ws: Workspace) -> None:
    if not (ws.root / "images").exists():
        write_jpeg_folder(ws.root / "images", ws.samples, ws.classes, IMAGE_SIZE,
                          labels=ws.labels)


def _shards(ws: Workspace) -> Path:
    _images(ws)
    if not (ws.root / "shards" / "index.npz").exists():
        run_build(ws)
    return ws.root / "shards"


def run_build(ws: Workspace) -> dict:
    from ltscale.data.shards import build_shards
    from ltscale.data.sources import open_source

    out = ws.fresh("shards")
    index = build_shards(open_source("imagefolder", ws.root / "images"), out,
                         source_kind="imagefolder", source_path=str(ws.root / "images"),
                         shard_bytes=64 << 20, workers=2, progress=False)
    return {"note": f"{len(index.shards)} shards, 2 writer processes (their memory not counted)"}


def run_verify(ws: Workspace) -> dict:
    from ltscale.data.verify import verify_dataset

    report = verify_dataset(ws.root / "shards", progress=False)
    if not report.ok:
        raise RuntimeError(f"bench scale: verify found problems: {report.problems[:3]}")
    return {}


def run_loader(ws: Workspace) -> dict:
    """Loader start-up and first batch (2 torch workers); the workers' PSS after it."""
    from ltscale.data.augment import make_preset
    from ltscale.data.augment_torch import TrainViews
    from ltscale.data.dataset import ManifestDataset
    from ltscale.data.index import ShardIndex
    from ltscale.data.loading import LoaderSettings, build_loader
    from ltscale.data.sampling import EpochSampler

    before = set(_children())
    index = ShardIndex.load(ws.root / "shards")
    preset = make_preset("simclr", IMAGE_SIZE, 3)
    ds = ManifestDataset.from_split(index, "train", TrainViews(preset, 2))
    loader = build_loader(ds, EpochSampler(len(ds), batch_size=64, seed=0),
                          LoaderSettings(backend="torch", workers=2), device=torch.device("cpu"),
                          mean=[0.5] * 3, std=[0.25] * 3, preset=preset, channels=3)
    it = iter(loader)
    next(it)
    pss = _worker_pss_mb(sorted(set(_children()) - before))
    del it, loader, ds
    gc.collect()
    return {"worker_pss_mb": max(pss) if pss else None}


def _recipe(ws: Workspace, name: str):
    from ltscale.bench.train import train_recipe

    return train_recipe(ws.root, ws.fresh(name), "torch", backbone="resnet_tiny",
                        method="simsiam", size=IMAGE_SIZE, batch=64, steps=ws.steps, epochs=1,
                        precision="fp32", device="cpu", workers=1,
                        finetune={"workers": 1, "batch_size": 256},
                        manifest={"imbalance": "natural", "noise": "none"})


def run_pretrain(ws: Workspace) -> dict:
    """Context (index, manifest) + one SimSiam epoch of ``ws.steps`` steps, 1 loader worker."""
    from ltscale.stages.context import make_context
    from ltscale.stages.pretrain import run_pretrain as pretrain

    ctx = make_context(_recipe(ws, "run-pretrain"), progress=False)
    pretrain(ctx)
    ctx.backend.close()
    return {"note": f"epoch capped at {ws.steps} steps of 64"}


def prepare_cache(ws: Workspace) -> None:
    from ltscale.stages.context import make_context
    from ltscale.stages.networks import new_encoder

    _shards(ws)
    ctx = make_context(_recipe(ws, "run-cache"), progress=False)
    ws.state["cache_ctx"] = (ctx, new_encoder(ctx).eval())


def run_cache(ws: Workspace) -> dict:
    """The fine-tune stage's fp16 feature cache: every labeled image through the encoder."""
    from ltscale.finetune.cache import module_sha256
    from ltscale.stages.finetune import cached_features

    ctx, encoder = ws.state.pop("cache_ctx")
    cache, _ = cached_features(ctx, encoder, ws.fresh("cache"), encoder_hash=module_sha256(encoder),
                               output="encoder", desc="encode")
    ctx.backend.close()
    return {"note": f"resnet_tiny, {cache.dim}-d rows"}


# --- component stages: the stage's code on arrays of the real size ------------------------------
def _features(ws: Workspace, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(ws.samples, dim, generator=g), dim=1)


def prepare_manifest(ws: Workspace) -> None:
    synthetic_index(ws.samples, ws.classes, labels=ws.labels).save(_mkdir(ws, "index"))


def _mkdir(ws: Workspace, name: str) -> Path:
    path = ws.fresh(name)
    path.mkdir(parents=True)
    return path


def run_manifest(ws: Workspace) -> dict:
    """`manifest make` (load the index, sym:0.2 noise, save) then `manifest stats`."""
    from ltscale.data.index import ShardIndex
    from ltscale.data.manifest import Manifest, build_manifest
    from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec, NoiseSpec
    from ltscale.data.manifest_stats import manifest_stats

    spec = ManifestSpec(imbalance=ImbalanceSpec.parse("natural"),
                        noise=NoiseSpec.parse("sym:0.2"))
    build_manifest(ShardIndex.load(ws.root / "index"), spec).save(ws.root / "index" / "m.npz")
    manifest_stats(Manifest.load(ws.root / "index" / "m.npz"))
    return {"note": "index rows only, no JPEGs"}


def prepare_sbcl(ws: Workspace) -> None:
    ws.state["bank"] = _features(ws, FEATURE_DIM)


def run_sbcl(ws: Workspace) -> dict:
    """SBCL's re-clustering (balanced subclasses + temperatures) of a full bank, one process."""
    from ltscale.methods.sbcl_clustering import (
        balanced_subclasses,
        class_concentration,
        class_temperatures,
    )

    bank = ws.state.pop("bank")
    labels, seen = torch.from_numpy(ws.labels), torch.ones(ws.samples, dtype=torch.bool)
    ids = balanced_subclasses(bank, labels, seen, ws.classes, delta=10, iters=10, seed=0)
    class_temperatures(class_concentration(bank, labels, seen, ws.classes, 10.0), 0.1)
    return {"note": f"random {FEATURE_DIM}-d bank, δ 10, 10 iterations, "
                    f"{int(ids.max()) + 1} subclasses"}


def prepare_knn(ws: Workspace) -> None:
    ws.state["bank"] = _features(ws, FEATURE_DIM)
    g = torch.Generator().manual_seed(1)
    ws.state["queries"] = torch.randn(KNN_QUERIES, FEATURE_DIM, generator=g)


def run_knn(ws: Workspace) -> dict:
    from ltscale.engine.knn import knn_predict

    bank, queries = ws.state.pop("bank"), ws.state.pop("queries")
    knn_predict(bank, torch.from_numpy(ws.labels), queries, ws.classes, k=200, temperature=0.1)
    return {"note": f"bank of all n random rows, {KNN_QUERIES} queries, k 200"}


def prepare_finetune(ws: Workspace) -> None:
    ws.state["feats"] = _features(ws, HEAD_DIM).half()[None]


def run_finetune(ws: Workspace) -> dict:
    """One epoch of a linear head (CE) on n cached fp16 rows."""
    from ltscale.finetune.trainer import train_head
    from ltscale.losses import classification_loss

    feats = ws.state.pop("feats")
    train_head(torch.nn.Linear(HEAD_DIM, ws.classes), feats, ws.labels,
               loss_fn=classification_loss("ce", ws.counts.tolist()), epochs=1,
               batch_size=1024, lr=1e-3, progress=False)
    return {"note": f"random {HEAD_DIM}-d fp16 rows, batch 1024"}


def prepare_report(ws: Workspace) -> None:
    per = TEST_PER_CLASS.get(ws.dataset, 20)
    targets = torch.arange(ws.classes).repeat_interleave(per)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(len(targets), ws.classes, generator=g)
    logits[torch.arange(len(targets)), targets] += 2.0
    ws.state["report"] = (logits, targets)


def run_report(ws: Workspace) -> dict:
    """Eval metrics (per-class, groups, confusion) and the report (markdown, JSON, plots)."""
    from ltscale.eval.metrics import classification_metrics
    from ltscale.eval.report import write_report

    logits, targets = ws.state.pop("report")
    m = classification_metrics(logits, targets, ws.counts.tolist())
    del logits
    classes = [f"class{c:05d}" for c in range(ws.classes)]
    write_report(ws.fresh("report"), "bench scale", {"model": m}, classes, ws.counts.tolist(),
                 {"dataset": ws.dataset})
    return {"note": f"random logits, {len(targets)} test images"}


def prepare_compare(ws: Workspace) -> None:
    from ltscale.bench.scale_runs import fake_eval_runs

    runs = max(2, round(COMPARE_RUNS * ws.fraction))
    # per-class metrics as the eval stage logs them: up to eval.class_metrics_max classes
    ws.state["compare"] = fake_eval_runs(_mkdir(ws, "mlruns"), runs, _class_metrics(ws.classes))


def run_compare(ws: Workspace) -> dict:
    """What `ltscale compare EXP --group-by method` does: load, group, render the table."""
    from ltscale.eval import compare as c

    uri, runs = ws.state.pop("compare")
    loaded = c.filter_runs(c.load_runs("bench-scale", uri), [])
    metrics = c.resolve_metrics(loaded, None)
    header, rows = c.table_rows(c.group_runs(loaded, ["method"], metrics), ["method"], metrics,
                                "md")
    (ws.root / "compare.md").write_text(c.render(header, rows, "md"))
    return {"size": runs, "note": f"{runs} eval runs with {_class_metrics(ws.classes)} "
                                  "per-class metrics each"}


def _class_metrics(classes: int) -> int:
    from ltscale.config.schema import EvalCfg

    cap = EvalCfg().class_metrics_max
    return classes if classes <= cap else 0


# name: (prepare, run, kind); "data" stages need JPEG shards
STAGES = {
    "build": (_images, run_build, "data"),
    "verify": (_shards, run_verify, "data"),
    "manifest": (prepare_manifest, run_manifest, "component"),
    "loader": (_shards, run_loader, "data"),
    "pretrain": (_shards, run_pretrain, "data"),
    "sbcl": (prepare_sbcl, run_sbcl, "component"),
    "knn": (prepare_knn, run_knn, "component"),
    "cache": (prepare_cache, run_cache, "data"),
    "finetune": (prepare_finetune, run_finetune, "component"),
    "report": (prepare_report, run_report, "component"),
    "compare": (prepare_compare, run_compare, "component"),
}
