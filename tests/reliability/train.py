"""A small training job over ltscale's real pieces, for the reliability tier.

Run under torchrun (``python -m torch.distributed.run --nproc-per-node 2 tests/reliability/
train.py …``) or in one process. It reads a tiny shard set through the real manifest, sampler
(``EpochSampler``), shard check (``check_shards``), torch loader with its DataLoader workers and
augmentation, the DDP (gloo), local or (``--backend deepspeed``) DeepSpeed ZeRO-2 backend, and
trains with the real ``fit`` loop and its checkpoints. Only the model is the script's own: a
small conv net whose hooks write, per rank, one JSON line per optimizer step (step, epoch, loss,
the positions the step read) to ``OUT/steps-<RELI_TAG>-rank<R>.jsonl`` (tag ``run`` by
default).

Faults are injected through environment variables, so a test can stop a rank at a known point
and SIGKILL it from outside:

``RELI_PAUSE=after:N`` | ``before:N`` | ``epoch_end:E``  (optionally ``@RANK``, default rank 0)
    after step N is logged / before step N's forward / in the epoch-end hook of epoch E (before
    that epoch's checkpoint): write ``OUT/paused`` and sleep until killed.
``RELI_PARTIAL_SAVE=N``  rank 0 writes only the first half of checkpoint N's bytes to the file
    the checkpoint code hands to ``torch.save``, writes ``OUT/paused`` and sleeps.
``RELI_RAISE=N@R``  rank R writes ``OUT/ready`` at step N, waits for ``OUT/go``, then raises
    ``RuntimeError`` (``OUT/raised`` holds the time of the raise).
``RELI_NAN=N@R`` / ``RELI_INF=N@R``  rank R's loss at step N is NaN / inf.

At the end rank 0 writes ``OUT/final.pt`` (model and optimizer state, ``weights_only``-safe).
``OUT/resumed.pt`` is the state right after a resume, before the first step.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ltscale.data.augment import make_preset  # noqa: E402
from ltscale.data.augment_torch import TrainViews  # noqa: E402
from ltscale.data.dataset import ManifestDataset  # noqa: E402
from ltscale.data.index import ShardIndex  # noqa: E402
from ltscale.data.loading import LoaderSettings, build_loader  # noqa: E402
from ltscale.data.manifest import Manifest  # noqa: E402
from ltscale.data.sampling import EpochSampler  # noqa: E402
from ltscale.data.verify import check_shards  # noqa: E402
from ltscale.engine.backend import LocalBackend  # noqa: E402
from ltscale.engine.loop import LoopConfig, fit  # noqa: E402
from ltscale.track import NullTracker  # noqa: E402


def _fault(name: str, rank: int) -> int | None:
    """Step of fault ``name`` (``N@R``) if it targets ``rank`` (default rank 0)."""
    value = os.environ.get(name)
    if not value:
        return None
    step, _, who = value.partition("@")
    return int(step) if int(who or 0) == rank else None


def _hang(out: Path, what: str) -> None:
    (out / "paused.tmp").write_text(what)
    os.replace(out / "paused.tmp", out / "paused")
    while True:  # until SIGKILL
        time.sleep(60)


class TinyNet(nn.Module):
    """conv → conv → pool → (dropout) → linear; CE on the observed labels. No batch norm, so
    a step on ``W`` ranks equals a step on one process with the global batch (up to rounding)."""

    views = 1
    uses_labels = True

    def __init__(self, classes: int, dropout: float, out: Path, rank: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, classes)
        self.out, self.rank = out, rank
        tag = os.environ.get("RELI_TAG", "run")
        self.log = open(out / f"steps-{tag}-rank{rank}.jsonl", "a")
        self.pending: dict = {}
        self.loop_step: int | None = None  # optimizer steps done (set after a resume, too)
        self.epoch = 0

    def forward(self, batch):
        x, y, pos = batch
        step = (self.loop_step or 0) + 1
        pause = os.environ.get("RELI_PAUSE", "")
        if pause == f"before:{step}" or pause == f"before:{step}@{self.rank}":
            _hang(self.out, f"before step {step}")
        if _fault("RELI_RAISE", self.rank) == step:
            (self.out / "ready").write_text(str(step))
            while not (self.out / "go").exists():  # the test lists the job's processes first
                time.sleep(0.05)
            (self.out / "raised").write_text(repr(time.time()))
            raise RuntimeError(f"injected failure on rank {self.rank} at step {step}")
        loss = nn.functional.cross_entropy(self.head(self.drop(self.features(x))), y)
        if _fault("RELI_NAN", self.rank) == step:
            loss = loss * float("nan")
        if _fault("RELI_INF", self.rank) == step:
            loss = loss * float("inf")
        self.pending = {"loss": float(loss.detach()), "positions": pos.tolist(),
                        "labels": y.tolist()}
        return {"loss": loss}

    def after_step(self, step: int, total: int) -> None:
        self.loop_step = step + 1
        record = {"step": step + 1, "epoch": self.epoch, **self.pending}
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        pause = os.environ.get("RELI_PAUSE", "")
        if pause in (f"after:{step + 1}", f"after:{step + 1}@{self.rank}"):
            _hang(self.out, f"after step {step + 1}")

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch


def _partial_save_hook(out: Path, step: int) -> None:
    """``torch.save`` that, for checkpoint ``step``, writes half the bytes and hangs."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == step and "sampler" in obj:
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            if hasattr(f, "write"):  # the checkpoint writer's file object (keeps OS errors)
                f.write(data[: len(data) // 2])
                f.flush()
                target = getattr(getattr(f, "fh", None), "name", f)
            else:
                with open(f, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                target = f
            _hang(out, f"half of checkpoint {step} written to {target}")
        return real(obj, f, *args, **kwargs)

    torch.save = save


def _state(model: nn.Module, optimizer) -> dict:
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--on-error", default="fail")
    p.add_argument("--check", default="size")
    p.add_argument("--loader", default="torch")
    p.add_argument("--backend", default="auto", choices=("auto", "deepspeed"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.backend == "deepspeed":
        from ltscale.engine.deepspeed_backend import DeepSpeedBackend

        backend = DeepSpeedBackend("cpu", "fp32", zero_stage=2, timeout_s=60)
    elif world > 1:
        from ltscale.engine.ddp import DDPBackend

        backend = DDPBackend("cpu", timeout_s=60)
    else:
        backend = LocalBackend("cpu")
    (out / f"pid-rank{backend.rank}").write_text(str(os.getpid()))
    if os.environ.get("RELI_PARTIAL_SAVE") and backend.is_main:
        _partial_save_hook(out, int(os.environ["RELI_PARTIAL_SAVE"]))

    index = ShardIndex.load(args.data)
    manifest = Manifest.load(args.manifest)
    manifest.check_index(index)
    preset = make_preset("supervised", 16, 3, jitter=0.4)
    dataset = ManifestDataset.from_manifest(index, manifest, TrainViews(preset, 3),
                                            on_error=args.on_error)
    if args.global_batch % world:
        raise SystemExit(f"global batch {args.global_batch} is not divisible by {world} ranks")
    sampler = EpochSampler(len(dataset), batch_size=args.global_batch // world, seed=args.seed,
                           rank=backend.rank, world_size=world, labels=dataset.labels,
                           rows=dataset.rows)
    check_shards(index, dataset.rows, args.check)
    settings = LoaderSettings(backend=args.loader, workers=args.workers, on_error=args.on_error)
    loader = build_loader(dataset, sampler, settings, device=backend.device, mean=(0.5,) * 3,
                          std=(0.25,) * 3, preset=preset, channels=3)

    torch.manual_seed(args.seed)
    model = TinyNet(index.num_classes, args.dropout, out, backend.rank)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for group in optimizer.param_groups:
        group["base_lr"] = 0.1

    # the trajectory depends on these, not on how many ranks read the global batch
    fingerprint = hashlib.sha256(json.dumps(
        [manifest.hash, args.seed, args.dropout, args.global_batch]).encode()).hexdigest()[:16]
    cfg = LoopConfig(epochs=args.epochs, schedule="cosine", warmup_epochs=0.5,
                     checkpoint_every=args.checkpoint_every, keep=args.keep, progress=False,
                     desc="reliability")
    ckpt = out / "ck.pt"

    def on_epoch_end(epoch: int) -> dict:
        pause = os.environ.get("RELI_PAUSE", "")
        if pause in (f"epoch_end:{epoch + 1}", f"epoch_end:{epoch + 1}@{backend.rank}"):
            _hang(out, f"epoch end {epoch + 1}")
        return {}

    # fit restores model and optimizer, then the sampler: record the restored state there
    real_load = sampler.load_state_dict
    steps_per_epoch = len(dataset) // args.global_batch

    def load_and_dump(state):
        real_load(state)
        model.loop_step = (sampler.epoch * steps_per_epoch
                           + sampler.global_consumed() // args.global_batch)
        if backend.is_main:
            torch.save(_state(model, optimizer) | {"sampler": state}, out / "resumed.pt")

    sampler.load_state_dict = load_and_dump
    state = fit(model, loader, sampler, optimizer, cfg, backend, NullTracker(),
                checkpoint=ckpt, on_epoch_end=on_epoch_end, fingerprint=fingerprint)
    if backend.is_main:
        torch.save(_state(model, optimizer) | {"history": state.history,
                                               "step": state.step}, out / "final.pt")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
