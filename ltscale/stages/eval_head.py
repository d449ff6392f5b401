"""Evaluating a trained head (`ltscale eval --from HEAD`): only with the very encoder it was
trained on, on the recipe's test selection, with a report."""

from __future__ import annotations

from pathlib import Path

import torch

from ltscale.engine.checkpoint import load_checkpoint
from ltscale.engine.features import encode
from ltscale.errors import CheckpointError
from ltscale.eval.report import write_report
from ltscale.hashing import file_sha256
from ltscale.stages.context import Context
from ltscale.stages.evaluate import evaluate_logits
from ltscale.stages.finetune import head_from_file
from ltscale.stages.loaders import test_loader
from ltscale.stages.pretrain import load_encoder


def head_encoder(head_path) -> str:
    """The encoder file ``head_path`` was trained on, proven unchanged since."""
    saved = load_checkpoint(head_path)
    encoder_ref = saved.get("encoder")
    if not encoder_ref:
        raise CheckpointError(f"{head_path} does not name the encoder it was trained on")
    check_head_encoder(head_path, encoder_ref, saved.get("encoder_sha256"))
    return encoder_ref


def check_head_encoder(head_path, encoder_ref: str, recorded: str | None) -> None:
    """A head is evaluated only with the very encoder it was trained on: the file at its
    recorded path must still hold the content whose SHA-256 the head recorded."""
    encoder = Path(encoder_ref)
    if not encoder.is_file():
        raise CheckpointError(f"{head_path} was trained on the encoder {encoder}, which no longer "
                              "exists; fine-tune again (`ltscale finetune`)")
    if not recorded:
        raise CheckpointError(f"{head_path} records no SHA-256 of its encoder {encoder} (made by "
                              "an older ltscale), so the encoder cannot be proven unchanged; "
                              "fine-tune again (`ltscale finetune`)")
    found = file_sha256(encoder)
    if found != recorded:
        raise CheckpointError(f"{head_path} was trained on encoder {encoder} with SHA-256 "
                              f"{recorded[:16]}…, but that file now has {found[:16]}… (it was "
                              "replaced, e.g. by a later pretraining); fine-tune again on it or "
                              "evaluate the matching head")


def evaluate_head(ctx: Context, head_path, encoder_ref: str) -> tuple[dict, dict]:
    """(metrics, report paths) of the head on the test selection; the report lands in
    ``OUTPUT_DIR/eval_report``."""
    encoder = load_encoder(encoder_ref).to(ctx.device)
    feats, targets = encode(encoder, test_loader(ctx), ctx.device)
    with torch.no_grad():
        logits = head_from_file(head_path, ctx.index.num_classes)(feats)
    metrics = evaluate_logits(ctx, logits, targets)
    embedding = (feats.cpu().numpy(), targets.numpy(), Path(head_path).name) \
        if ctx.recipe.eval.embedding_plot else None
    paths = write_report(ctx.out / "eval_report", f"ltscale eval: {ctx.recipe.name}",
                         {str(head_path): metrics}, ctx.index.classes,
                         ctx.manifest.reference_counts().tolist(), {"head": str(head_path)},
                         embedding=embedding)
    return metrics, paths
