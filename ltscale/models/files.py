"""The on-disk formats of ltscale's networks: the encoder file (``encoder.pt``: a backbone's
weights, what rebuilds it and, when pretraining had one, the projector) and the head file
(``head.pt``: a fine-tuned head as a plain ``spec`` plus weights, ``models/classifier.py``).
Both hold tensors and plain values only, written atomically and read with ``weights_only=True``
(``core/torch_file.py``), so a file rebuilds its network without pickled code. Reading checks the
file against what the caller expects (backbone, input channels, number of classes) and names the
file and the setting that differ."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ltscale.core.errors import CheckpointError
from ltscale.core.torch_file import load_checkpoint, save_checkpoint
from ltscale.models.classifier import Head, build_head
from ltscale.models.registry import create_backbone

HEAD_FORMAT = "ltscale-head/2"


# --- encoder files -------------------------------------------------------------------------------

def write_encoder(path: Path, encoder: nn.Module, *, backbone: str, cifar_stem: bool,
                  in_chans: int, projector: nn.Module | None = None) -> Path:
    """An encoder file at ``path``, written atomically (a full disk names the file): the
    encoder's state dict, the backbone name, stem and input channels that rebuild it, and the
    projector (its Linear widths and state dict) when given.

    ``encoder`` may also be a method (anything with ``.encoder``): its ``projector``, when it has
    one (SimSiam), is stored too, so fine-tuning can start from the pretrained projection head
    (``finetune.mode: proj_head | last_fc``)."""
    if hasattr(encoder, "encoder") and isinstance(encoder.encoder, nn.Module):
        projector = projector if projector is not None else getattr(encoder, "projector", None)
        encoder = encoder.encoder
    saved = {"backbone": backbone, "cifar_stem": cifar_stem, "in_chans": int(in_chans),
             "feat_dim": int(getattr(encoder, "feat_dim", 0)),
             "state_dict": {k: v.cpu() for k, v in encoder.state_dict().items()}}
    if projector is not None:
        widths = [(m.in_features, m.out_features) for m in projector.modules()
                  if isinstance(m, nn.Linear)]
        saved["projector"] = {"dims": [w[0] for w in widths] + [widths[-1][1]],
                              "state_dict": {k: v.cpu() for k, v in projector.state_dict().items()}}
    save_checkpoint(path, saved)
    return path


def read_encoder_file(path: str | Path, expected_backbone: str | None = None,
                      in_chans: int | None = None) -> dict:
    """The checked contents of an encoder file."""
    saved = load_checkpoint(path)
    if "state_dict" not in saved or "backbone" not in saved:
        raise CheckpointError(f"{path} is not an ltscale encoder file (expected the encoder.pt "
                              "that `ltscale pretrain` writes)")
    if expected_backbone is not None and saved["backbone"] != expected_backbone:
        raise CheckpointError(f"{path} holds a {saved['backbone']} encoder but the recipe's "
                              f"pretrain.backbone.name is {expected_backbone}; set "
                              f"pretrain.backbone.name={saved['backbone']} or pass another file")
    if in_chans is not None and int(saved["in_chans"]) != int(in_chans):
        raise CheckpointError(f"{path} holds an encoder for {saved['in_chans']}-channel images "
                              f"but the recipe's data.channels is {in_chans}")
    return saved


def load_encoder(path: str | Path, expected_backbone: str | None = None,
                 in_chans: int | None = None) -> nn.Module:
    """Rebuild the encoder of ``path``; with ``expected_backbone`` / ``in_chans`` (the recipe's
    ``pretrain.backbone.name`` / ``data.channels``) a file made for another network is refused."""
    return encoder_from_file_contents(read_encoder_file(path, expected_backbone, in_chans), path)


def encoder_from_file_contents(saved: dict, path: str | Path) -> nn.Module:
    """The encoder of an already read (and checked) encoder file."""
    enc = create_backbone(saved["backbone"], in_chans=saved["in_chans"],
                          cifar_stem=saved["cifar_stem"])
    try:
        missing, unexpected = enc.load_state_dict(saved["state_dict"], strict=False)
    except RuntimeError as exc:  # right names, wrong shapes: another network under the same label
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                     str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: weights do not fit backbone {saved['backbone']} "
                              f"({first})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit backbone {saved['backbone']} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return enc


# --- head files ----------------------------------------------------------------------------------

def write_head(path: Path, head: Head, *, num_classes: int, mode: str, classifier_stage: str,
               encoder: Path | None, encoder_sha256: str | None = None) -> Path:
    """A head file: the head's ``spec`` and weights, the fine-tuning mode and classifier stage
    that made it, and the encoder file it was trained on (with that file's content digest, so
    evaluation refuses an encoder that changed since)."""
    save_checkpoint(path, {
        "format": HEAD_FORMAT, "spec": head.spec,
        "state_dict": {k: v.cpu() for k, v in head.state_dict().items()},
        "num_classes": int(num_classes), "mode": mode, "classifier_stage": classifier_stage,
        "encoder": str(encoder) if encoder else None,
        "encoder_sha256": encoder_sha256 if encoder else None})
    return path


def head_from_file(path: Path, num_classes: int | None = None) -> nn.Module:
    """Rebuild the head of a head file (any mode / classifier stage): a module mapping encoder
    features to logits. With ``num_classes`` (the dataset's), a head for another number of
    classes is refused."""
    saved = load_checkpoint(path)
    if "state_dict" not in saved:
        raise CheckpointError(f"{path} is not an ltscale head file (expected the head.pt that "
                              "`ltscale finetune` writes)")
    if "spec" in saved:
        head = build_head(saved["spec"], saved["state_dict"])
        saved_classes = int(saved["spec"]["num_classes"])
    else:  # heads written before modes existed: a plain linear layer
        w = saved["state_dict"]["weight"]
        head = nn.Linear(w.shape[1], w.shape[0])
        head.load_state_dict(saved["state_dict"])
        saved_classes = int(w.shape[0])
    if num_classes is not None and saved_classes != int(num_classes):
        raise CheckpointError(f"{path} is a head for {saved_classes} classes but the dataset has "
                              f"{num_classes} classes; fine-tune a head on this dataset")
    return head.eval()
