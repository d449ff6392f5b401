"""Evaluating a trained head (`ltscale eval --from HEAD`): only with the very encoder it was
trained on, on the recipe's test selection, with a report."""

from __future__ import annotations

from pathlib import Path

import torch

from ltscale.core.errors import CheckpointError
from ltscale.core.hashing import file_sha256
from ltscale.engine.checkpoint import load_checkpoint
from ltscale.engine.features import encode
from ltscale.eval.report import write_report
from ltscale.models.files import head_from_file, load_encoder, read_encoder_file
from ltscale.stages.context import Context
from ltscale.stages.evaluate import evaluate_logits
from ltscale.stages.loaders import test_loader


def head_encoder(head_path) -> str:
    """The encoder file ``head_path`` was trained on, proven unchanged since."""
    saved = load_checkpoint(head_path)
    encoder_ref = saved.get("encoder")
    if not encoder_ref:
        raise CheckpointError(f"{head_path} does not name the encoder it was trained on")
    check_head_encoder(head_path, encoder_ref, saved.get("encoder_sha256"))
    return encoder_ref


def check_head_fits(head_path, encoder_ref: str, data) -> None:
    """A head trained on another dataset is refused before any work, naming both: its encoder's
    input channels against ``data.channels`` and, once the recipe's dataset is built, its class
    count against that dataset's."""
    from ltscale.data.index import ShardIndex

    chans = int(read_encoder_file(encoder_ref)["in_chans"])
    if chans != data.channels:
        raise CheckpointError(f"{head_path} was trained on {chans}-channel images (encoder "
                              f"{encoder_ref}) but this recipe's dataset {data.shards} has "
                              f"data.channels {data.channels}; evaluate it with the recipe it "
                              "was trained with, or fine-tune a head on this dataset")
    if not (Path(data.shards) / "index.npz").exists():
        return  # built by the stage; head_from_file compares the class counts then
    saved = load_checkpoint(head_path)
    spec = saved.get("spec") or {}
    weight = saved.get("state_dict", {}).get("weight")
    classes = saved.get("num_classes") or spec.get("num_classes") or (
        int(weight.shape[0]) if weight is not None else None)
    index = ShardIndex.load(data.shards)
    if classes is not None and int(classes) != index.num_classes:
        raise CheckpointError(f"{head_path} is a head for {int(classes)} classes but this "
                              f"recipe's dataset {data.shards} has {index.num_classes}; evaluate "
                              "it with the recipe it was trained with, or fine-tune a head on "
                              "this dataset")


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
    encoder = load_encoder(encoder_ref, in_chans=ctx.recipe.data.channels).to(ctx.device)
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
