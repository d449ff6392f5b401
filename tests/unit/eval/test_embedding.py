"""The report's feature map: a bounded stratified subsample, a valid PNG, off unless asked."""

import numpy as np

from ltscale.eval.embedding import plot_embedding, stratified_subsample
from ltscale.eval.metrics import classification_metrics
from ltscale.eval.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_subsample_is_bounded_and_keeps_every_class():
    labels = np.repeat(np.arange(50), np.linspace(400, 2, 50).astype(int))
    keep = stratified_subsample(labels, max_points=300, seed=1)
    assert len(keep) <= 300 and len(np.unique(keep)) == len(keep)
    assert set(labels[keep]) == set(range(50))  # the rarest classes too
    small = np.array([0, 1, 1, 2])
    assert stratified_subsample(small, 10).tolist() == [0, 1, 2, 3]


def _blobs(n_classes, per_class, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim)) * 4
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


def test_map_by_class_and_by_shot_group_are_pngs(tmp_path):
    feats, labels = _blobs(4, 30)
    out = plot_embedding(tmp_path / "a.png", feats, labels, [300, 60, 30, 5], list("abcd"),
                         {"many": [0], "medium": [1, 2], "few": [3]}, "m")
    assert out.read_bytes()[:8] == PNG_MAGIC
    feats, labels = _blobs(30, 8)  # many classes: coloured by group
    counts = np.linspace(300, 2, 30).astype(int)
    groups = {"many": list(range(10)), "medium": list(range(10, 20)), "few": list(range(20, 30))}
    out = plot_embedding(tmp_path / "b.png", feats, labels, counts, [str(c) for c in range(30)],
                         groups, max_points=120)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert plot_embedding(tmp_path / "c.png", feats[:2], labels[:2], counts, [], groups) is None


def test_report_draws_the_map_only_when_given_features(tmp_path):
    feats, labels = _blobs(4, 25)
    logits = np.eye(4)[labels] * 2.0
    import torch

    m = classification_metrics(torch.tensor(logits), torch.tensor(labels), [300, 60, 30, 5])
    plain = write_report(tmp_path / "plain", "t", {"m": m}, list("abcd"), [300, 60, 30, 5], {})
    assert "embedding" not in plain and not (tmp_path / "plain" / "embedding.png").exists()
    paths = write_report(tmp_path / "map", "t", {"m": m}, list("abcd"), [300, 60, 30, 5], {},
                         embedding=(feats, labels, "m"))
    assert paths["embedding"].read_bytes()[:8] == PNG_MAGIC
