"""Evaluation stage: metrics on the balanced test split, noise separation, the overlap check."""

from __future__ import annotations

import logging

import numpy as np

from ltscale.core.errors import ManifestError
from ltscale.data.duplicates import NO_HASHES, hash_groups
from ltscale.eval.metrics import classification_metrics, scalar_metrics
from ltscale.eval.noise import noise_separation
from ltscale.stages.context import Context
from ltscale.stages.loaders import test_selection

logger = logging.getLogger(__name__)
_UNCHECKED: set = set()  # indexes without image hashes already warned about


def check_disjoint(train_manifest_ids, eval_ids, allow: bool = False, examples: int = 5) -> int:
    """Refuse evaluation samples that are also training samples; return how many overlap.

    ``train_manifest_ids``: the index rows of the training manifest's labeled and unlabeled
    samples; ``eval_ids``: the rows evaluated on. With ``allow`` (``eval.allow_overlap``) the
    overlap is only counted."""
    overlap = np.intersect1d(np.asarray(train_manifest_ids, dtype=np.int64),
                             np.asarray(eval_ids, dtype=np.int64))
    if len(overlap) and not allow:
        shown = ", ".join(str(int(i)) for i in overlap[:examples])
        raise ManifestError(
            f"{len(overlap)} evaluation samples are also in the training manifest (labeled or "
            f"unlabeled), e.g. sample ids {shown}{' …' if len(overlap) > examples else ''}. "
            "Evaluate on a split the manifest does not train on (eval.split, or the manifest's "
            "test selection), or set eval.allow_overlap: true to accept it.")
    return int(len(overlap))


def check_content_disjoint(index, train_manifest_ids, eval_ids, allow: bool = False,
                           examples: int = 5) -> int | None:
    """Refuse evaluation images that are byte-identical to training images (another row of the
    index with the same image hash: a duplicate file, the same image in two splits); return how
    many evaluation samples share an image with training (by row or by content). ``None``, with
    a warning, when the index has no image hashes (built by an older ltscale)."""
    hashes = index.image_hashes()
    if hashes is None:
        where = str(index.root or "(memory)")
        if (where, index.content_hash()) not in _UNCHECKED:
            _UNCHECKED.add((where, index.content_hash()))
            logger.warning("test images not checked against the training images by content: "
                           f"the index at {where} {NO_HASHES}")
        return None
    train = np.asarray(train_manifest_ids, dtype=np.int64)
    evals = np.asarray(eval_ids, dtype=np.int64)
    gid = hash_groups(np.concatenate([hashes[train], hashes[evals]]))
    g_train, g_eval = gid[:len(train)], gid[len(train):]
    shared = np.isin(g_eval, g_train)
    other_row = shared & ~np.isin(evals, train)  # a row in both is check_disjoint's to refuse
    if other_row.any() and not allow:
        shown = []
        for pos in np.flatnonzero(other_row)[:examples]:
            match = train[np.flatnonzero(g_train == g_eval[pos])[0]]
            shown.append(f"{index.key[evals[pos]]} = {index.key[match]}")
        n = int(other_row.sum())
        raise ManifestError(
            f"{n} evaluation images are byte-identical to training images of the manifest "
            f"(labeled or unlabeled; same image hash in the index at {index.root}), e.g. "
            f"{', '.join(shown)}{' …' if n > examples else ''}. Remove the duplicates from the "
            "dataset, or set eval.allow_overlap: true to accept them.")
    return int(shared.sum())


def check_eval_disjoint(ctx: Context) -> int:
    """``check_disjoint`` and ``check_content_disjoint`` for the context's training manifest and
    test rows; returns the test samples that share an image with training (by row, and by
    content where the index has image hashes)."""
    train_ids, _ = ctx.manifest.rows("labeled", "unlabeled")
    _, test_ids, _ = test_selection(ctx)
    allow = ctx.recipe.eval.allow_overlap
    by_row = check_disjoint(train_ids, test_ids, allow)
    by_content = check_content_disjoint(ctx.index, train_ids, test_ids, allow)
    return by_row if by_content is None else by_content


def evaluate_logits(ctx: Context, logits, targets, model: str | None = None,
                    budget=None) -> dict:
    """Test metrics of ``logits``, logged to the current run; ``model`` (the report's name for
    it, e.g. "simsiam + la_sl") is tagged ``ltscale.model`` so that `ltscale compare --reference`
    can match the paper's figure for that model. ``budget`` (a ``stages.budget.Budget``: what
    training the model cost, all its stages) is logged beside them (``budget/*``) and kept in
    the result under ``"budget"``."""
    e = ctx.recipe.eval
    if model is not None:
        ctx.tracker.set_tags({"ltscale.model": model})
    overlap = check_eval_disjoint(ctx)
    m = classification_metrics(logits, targets, ctx.manifest.reference_counts().tolist(),
                               e.many_threshold, e.few_threshold, e.ece_bins)
    scalars = {f"test/{k}": v for k, v in scalar_metrics(m).items()}
    if len(m["per_class"]) <= e.class_metrics_max:
        scalars |= {f"test/class_{c}": v for c, v in enumerate(m["per_class"]) if v == v}  # no NaN
    scalars["test/train_overlap"] = overlap
    if budget is not None:
        scalars |= budget.as_metrics()
        m["budget"] = {"images": budget.images, "steps": budget.steps,
                       "seconds": budget.seconds}
    ctx.tracker.log_metrics(scalars)
    return m


def evaluate_noise(ctx: Context, confidence, threshold: float = 1.0) -> dict:
    """Noise separation of per-sample confidences (σ*) of the manifest's labeled samples, given
    in the order of ``ctx.manifest.rows("labeled")``; logs ``noise/*`` scalars."""
    lab = ctx.manifest.mask("labeled")
    confidence = np.asarray(confidence, dtype=np.float64)
    known = np.isfinite(confidence)  # NaN: a sample skipped as unreadable
    n = noise_separation(confidence[known], ctx.manifest.observed[lab][known],
                         ctx.manifest.clean[lab][known], threshold)
    scalars = {"noise/rate": n["noise_rate"], "noise/auroc": n["auroc"]}
    for key in ("at_threshold", "at_noise_rate"):
        scalars |= {f"noise/{key}_{k}": n[key][k] for k in ("precision", "recall", "f1")}
    ctx.tracker.log_metrics({k: v for k, v in scalars.items() if v is not None})
    return n
