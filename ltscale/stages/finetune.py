"""Fine-tuning stage: frozen encoder → feature cache → head trained with the recipe's loss."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ltscale.atomic import atomic_path
from ltscale.config import flatten
from ltscale.finetune.cache import build_cache, load_cache
from ltscale.finetune.head import train_head
from ltscale.stages.context import Context
from ltscale.stages.loaders import manifest_eval_loader, test_loader


def run_finetune(ctx: Context, encoder: torch.nn.Module, name: str = "finetune",
                 encoder_path: Path | None = None) -> dict:
    f = ctx.recipe.finetune
    stage_dir = ctx.out / name
    encoder = encoder.to(ctx.device)
    t0 = time.perf_counter()
    train_cache = build_cache(encoder, manifest_eval_loader(ctx, workers=f.workers), ctx.device,
                              stage_dir / "features" / "train", f"{name}: encode train",
                              ctx.progress)
    test_cache = build_cache(encoder, test_loader(ctx, workers=f.workers),
                             ctx.device, stage_dir / "features" / ctx.recipe.eval.split,
                             f"{name}: encode {ctx.recipe.eval.split}", ctx.progress)
    encode_s = time.perf_counter() - t0
    feats, labels = load_cache(train_cache)
    t1 = time.perf_counter()
    head, history = train_head(feats, labels, ctx.index.num_classes,
                               ctx.manifest.class_counts().tolist(), loss=f.loss.name,
                               loss_options=f.loss.options(), epochs=f.epochs,
                               batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay,
                               seed=ctx.recipe.seed, progress=ctx.progress, tracker=ctx.tracker)
    head_s = time.perf_counter() - t1
    head_path = stage_dir / "head.pt"
    with atomic_path(head_path) as tmp:
        torch.save({"state_dict": head.state_dict(), "num_classes": ctx.index.num_classes,
                    "encoder": str(Path(encoder_path).resolve()) if encoder_path else None}, tmp)
    ctx.tracker.set_tags({"ltscale.head": str(head_path.resolve())})
    ctx.tracker.log_params(flatten({"finetune": f.model_dump()}))
    ctx.tracker.log_metrics({"finetune/encode_seconds": encode_s, "finetune/head_seconds": head_s,
                             "finetune/final_loss": history[-1]["loss"]})
    test_feats, test_labels = load_cache(test_cache)
    with torch.no_grad():
        logits = head(test_feats)
    return {"head": head_path, "logits": logits, "targets": test_labels, "history": history,
            "seconds": encode_s + head_s}


@torch.no_grad()
def predict_images(ctx: Context, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of an end-to-end classifier (the scratch baseline) on the evaluation split."""
    model.eval()
    outs, ys = [], []
    for x, y, _ in test_loader(ctx, workers=ctx.recipe.finetune.workers):
        outs.append(model.logits(x.to(ctx.device)).float().cpu())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def head_from_file(path: Path) -> torch.nn.Module:
    from ltscale.engine.checkpoint import load_checkpoint

    saved = load_checkpoint(path)
    w = saved["state_dict"]["weight"]
    head = torch.nn.Linear(w.shape[1], w.shape[0])
    head.load_state_dict(saved["state_dict"])
    return head
