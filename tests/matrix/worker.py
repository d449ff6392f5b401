"""One process (or one rank under torchrun) of the correctness matrix: every registered
pretraining method on one backend at one precision, through ltscale's real pieces.

``python -m torch.distributed.run --nproc-per-node N tests/matrix/worker.py --backend B
--precision P --data DIR --out OUT --mode checks|train`` (or plainly ``python worker.py …`` for
one process). The backend is built once (one process group), then for each method:

``checks``  the fixed-batch checks, then the real pretraining stage;
``fixed``   the fixed-batch checks only (e.g. under ``engine.compile``);
``train``   the real pretraining stage only (a relaunch after a kill resumes it).

Fixed-batch checks (written to ``OUT/checks-<method>.json`` by rank 0): the losses of
``STEPS`` optimizer steps on one batch from the real loader, through the backend's ``setup``,
``autocast``, ``backward``, ``step`` and the method's ``after_step``; which EMA/target tensors
moved; the dtype of every tensor the method declares ``keep_fp32``; whether every image batch the
backbone received had channels innermost (the engine runs channels-last).

The real stage (``run_pretrain``: the loop, its checkpoints every two steps, the kNN monitor at
every epoch end, the encoder export) writes ``OUT/final-<method>.pt`` (the method's state after
training) and ``OUT/export-<method>.json``: whether ``encoder.pt`` holds fp32 tensors equal to the
master weights (DeepSpeed: its optimizer's fp32 copies) and the monitor's score.

``MATRIX_KILL=N@R``: rank R (default the last) SIGKILLs itself at the N-th forward of each
method's stage, once per method (``OUT/killed-<method>`` marks it done), so that relaunching
until the job exits 0 kills and resumes every method once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ltscale.config.loading import recipe_from_dict  # noqa: E402
from ltscale.data.index import ShardIndex  # noqa: E402
from ltscale.data.manifest import Manifest  # noqa: E402
from ltscale.engine.checkpoint import load_checkpoint  # noqa: E402
from ltscale.engine.optim import build_optimizer  # noqa: E402
from ltscale.engine.precision import kept_tensors  # noqa: E402
from ltscale.methods import method_class  # noqa: E402
from ltscale.methods.ema import EMA  # noqa: E402
from ltscale.stages.context import Context, create_backend  # noqa: E402
from ltscale.stages.loaders import train_loader  # noqa: E402
from ltscale.stages.networks import new_encoder  # noqa: E402
from ltscale.stages.pretrain import build_method, run_pretrain  # noqa: E402
from tests.matrix.cells import device, recipe_dict  # noqa: E402

STEPS = 8  # fixed-batch steps


def _layout_probe(encoder: torch.nn.Module, seen: list) -> None:
    """Record, for every image batch the backbone receives, whether channels are innermost."""
    def hook(_module, args):
        x = args[0]
        if x.dim() == 4:
            seen.append(bool(x.stride(1) == 1 and x.stride(3) == x.shape[1]))

    encoder.register_forward_pre_hook(hook)


def fixed_batch_checks(ctx: Context, method_name: str) -> dict:
    stages = ctx.recipe.pretrain.resolved_stages()
    stage = stages[-1]
    method = build_method(ctx, stage.method, new_encoder(ctx))
    if len(stages) > 1:  # a method that starts from another one's network (FASSL)
        previous = build_method(ctx, stages[-2].method, new_encoder(ctx, seed=1))
        method.init_from(previous)
    loader, _ = train_loader(ctx, augment=stage.augment, batch_size=stage.batch_size, workers=0,
                             seed=ctx.recipe.seed, epochs=1, balance=stage.balance,
                             roles=("labeled",) if method.uses_labels else ("labeled",
                                                                            "unlabeled"))
    batch = ctx.backend.to_device(next(iter(loader)))
    layouts: list[bool] = []
    _layout_probe(method.encoder, layouts)
    emas = {n: m for n, m in method.named_modules() if isinstance(m, EMA)}
    targets = {f"{n}.{k}": p for n, m in emas.items() for k, p in m.named_parameters()}
    # every EMA here is built from (encoder, projector): its online counterparts, in order
    online = dict(zip(targets, [p for m in (method.encoder, getattr(method, "projector", None))
                                if m is not None for p in m.parameters()]))
    before = {k: (t.detach().float().clone(), online[k].detach().float().clone())
              for k, t in targets.items()}
    groups = method.param_groups() if hasattr(method, "param_groups") else [
        {"params": list(method.parameters())}]
    optimizer = build_optimizer(groups, stage.optim, stage.batch_size)
    model, optimizer = ctx.backend.setup(method, optimizer, batch_size=stage.batch_size)
    if hasattr(method, "set_epoch"):
        method.set_epoch(0, 1)
    model.train()
    losses = []
    for step in range(STEPS):
        with ctx.backend.autocast():
            out = model(batch)
        ctx.backend.clear_grads(optimizer, model)
        ctx.backend.backward(out["loss"], model)
        ctx.backend.step(optimizer, model)
        if hasattr(method, "after_step"):
            method.after_step(step, STEPS)
        losses.append(float(out["loss"].detach()))
    # target tensor → [it moved, its online counterpart moved by more than 1e-5 of its size]. An
    # online tensor may get (numerically almost) no gradient, e.g. a bias right before batch
    # norm; a target cannot show a 1e-5 step scaled by 1 − m, so it rightly stays.
    def changed(now, was, rel=0.0):
        return bool((now.detach().float() - was).abs().max() > rel * was.abs().max())

    moved = {k: [changed(t, before[k][0]), changed(online[k], before[k][1], 1e-5)]
             for k, t in targets.items()}
    kept = {name: str(t.dtype) for name, t in kept_tensors(method).items()
            if t.is_floating_point()}
    graphs = 0
    if ctx.recipe.engine.compile:  # graphs torch.compile captured (0: it fell back to eager)
        from torch._dynamo.utils import counters

        graphs = int(counters["stats"]["unique_graphs"])
    return {"method": method_name, "losses": losses, "ema_moved": moved, "kept_dtypes": kept,
            "layouts": layouts, "param_dtype": str(next(method.encoder.parameters()).dtype),
            "compiled_graphs": graphs}


def master_weights(ctx: Context, encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's fp32 master weights as the optimizer holds them (every rank calls this)."""
    params = dict(encoder.named_parameters())
    if ctx.backend.name == "deepspeed" and ctx.recipe.engine.precision != "fp32":
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in params.items():
            full = safe_get_full_fp32_param(p)
            out[name] = (full if full is not None else p).detach().cpu().clone()
        return out
    return {name: p.detach().cpu().clone() for name, p in params.items()}


def real_stage(ctx: Context, method_name: str, kill: tuple[int, int] | None) -> dict:
    out = ctx.out
    if kill is not None and not (out / f"killed-{method_name}").exists():
        at, who = kill
        calls = [0]

        def maybe_kill(_module, _args):
            calls[0] += 1
            if calls[0] == at and ctx.backend.rank == who:
                (out / f"killed-{method_name}").write_text(str(at))
                os.kill(os.getpid(), signal.SIGKILL)

        # every stage's method is built inside run_pretrain: hook the class's forward calls
        cls = method_class(ctx.recipe.pretrain.resolved_stages()[-1].method.name)
        original = cls.__call__

        def call(self, *args, **kwargs):
            maybe_kill(self, args)
            return original(self, *args, **kwargs)

        cls.__call__ = call
    result = run_pretrain(ctx)
    method = result.method
    method = getattr(method, "method", method)
    master = master_weights(ctx, method.encoder)
    if ctx.backend.is_main:
        saved = load_checkpoint(result.encoder)["state_dict"]
        export = {
            "all_fp32": all(t.dtype == torch.float32 for t in saved.values() if
                            t.is_floating_point()),
            "equal_master": all(torch.equal(saved[k].float(), v.float())
                                for k, v in master.items()),
            "knn": [h.get("knn/top1") for h in result.history],
        }
        torch.save({k: v.detach().cpu().clone() for k, v in method.state_dict().items()},
                   out / f"final-{method_name}.pt")
        (out / f"export-{method_name}.json").write_text(json.dumps(export))
    ctx.backend.barrier()
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("checks", "fixed", "train"), required=True)
    p.add_argument("--methods", required=True, help="comma-separated method names")
    args = p.parse_args()
    torch.set_num_threads(1)
    if device() == "cuda":  # a killed-and-resumed run is compared bit for bit with another run
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kill = None
    if os.environ.get("MATRIX_KILL"):
        at, _, who = os.environ["MATRIX_KILL"].partition("@")
        kill = (int(at), int(who) if who else int(os.environ.get("WORLD_SIZE", "1")) - 1)

    data = Path(args.data)
    index = ShardIndex.load(data / "shards")
    manifest = Manifest.load(data / "train.manifest.npz")
    base = recipe_from_dict(recipe_dict(data, out, args.backend, args.precision, "simsiam"))
    backend = create_backend(base)
    for name in args.methods.split(","):
        recipe = recipe_from_dict(recipe_dict(data, out / name, args.backend, args.precision,
                                              name))
        ctx = Context(recipe, index, manifest, data / "train.manifest.npz", out / name, backend,
                      progress=False)
        if args.mode in ("checks", "fixed"):
            checks = fixed_batch_checks(ctx, name)
            if backend.is_main:
                (out / f"checks-{name}.json").write_text(json.dumps(checks))
        if args.mode != "fixed":
            real_stage(ctx, name, kill)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
