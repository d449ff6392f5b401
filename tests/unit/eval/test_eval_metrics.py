"""Evaluation metrics checked by hand: accuracy, class groups, noise separation, seed aggregates."""

import itertools
import math

import numpy as np
import pytest
import torch

from ltscale.core.errors import ManifestError
from ltscale.data.shots import frequency_thirds, shot_groups
from ltscale.eval.aggregate import aggregate, format_mean_std, merge_seeds
from ltscale.eval.metrics import classification_metrics
from ltscale.eval.noise import auroc, average_ranks, detection, noise_separation
from ltscale.stages.evaluate import check_disjoint

COUNTS = [150, 100, 20, 19]


def hand_case():
    """4 classes, 4 test images each; correct: class 0 4/4, 1 3/4, 2 2/4, 3 1/4."""
    targets = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    preds = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 2, 2, 0, 1, 3, 0, 0, 2])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    return logits, targets


def test_hand_checked_metrics():
    logits, targets = hand_case()
    m = classification_metrics(logits, targets, COUNTS)
    assert m["per_class"] == [1.0, 0.75, 0.5, 0.25]
    assert m["top1"] == pytest.approx(10 / 16)
    assert m["balanced_acc"] == pytest.approx(0.625) == m["mean_per_class"]
    assert "top5" not in m  # only 4 classes
    assert m["groups"] == {"many": [0], "medium": [1, 2], "few": [3]}
    assert m["many"] == 1.0 and m["medium"] == pytest.approx(0.625) and m["few"] == 0.25
    # thirds of 4 classes: sizes 2 / 1 / 1
    assert m["thirds"] == {"frequent": [0, 1], "medium_third": [2], "rare": [3]}
    assert m["frequent"] == pytest.approx(0.875) and m["medium_third"] == 0.5 and m["rare"] == 0.25
    assert m["confusion"][1] == [1, 3, 0, 0] and m["confusion"][3] == [2, 0, 1, 1]
    assert sum(map(sum, m["confusion"])) == 16 and m["test_counts"] == [4, 4, 4, 4]
    assert m["shot_thresholds"] == {"many": 100, "few": 20}


def test_balanced_acc_differs_from_top1_on_an_unbalanced_test_set():
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    m = classification_metrics(torch.nn.functional.one_hot(preds, 3).float(), targets, [5, 5, 5])
    assert m["top1"] == pytest.approx(0.9)
    assert m["balanced_acc"] == pytest.approx(0.75)  # class 2 absent from the test set: skipped
    assert math.isnan(m["per_class"][2])


def test_top5_and_empty_groups():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(200, 7, generator=g), torch.randint(0, 7, (200,), generator=g)
    m = classification_metrics(logits, targets, [500] * 7)
    ref = (logits.topk(5, 1).indices == targets[:, None]).any(1).float().mean()
    assert m["top5"] == pytest.approx(float(ref)) and m["top5"] >= m["top1"]
    assert m["few"] is None and m["medium"] is None and m["many"] == pytest.approx(m["balanced_acc"])


def test_shot_edges():
    assert shot_groups([101, 100, 20, 19]) == {"many": [0], "medium": [1, 2], "few": [3]}
    assert shot_groups([0, 1, 1000]) == {"many": [2], "medium": [], "few": [0, 1]}
    assert shot_groups([51, 50, 10, 9], many=50, few=10) == {"many": [0], "medium": [1, 2], "few": [3]}
    with pytest.raises(ValueError):
        shot_groups([1], many=10, few=20)


def test_thirds_on_six_classes_and_remainders():
    assert frequency_thirds([5, 60, 10, 40, 20, 30]) == {
        "frequent": [1, 3], "medium_third": [5, 4], "rare": [2, 0]}
    assert [len(v) for v in frequency_thirds(range(10)).values()] == [4, 3, 3]
    assert [len(v) for v in frequency_thirds(range(11)).values()] == [4, 4, 3]
    # ties keep class order: the lower index counts as more frequent
    assert frequency_thirds([7, 7, 7]) == {"frequent": [0], "medium_third": [1], "rare": [2]}
    assert frequency_thirds([3, 9]) == {"frequent": [1], "medium_third": [0], "rare": []}


# --- noise separation --------------------------------------------------------------------------
def brute_auroc(scores, positive):
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_average_ranks_share_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_auroc_hand_case():
    # clean {0.9, 0.5, 0.5}, noisy {0.5, 0.2}: pairs 0.9>0.5, 0.9>0.2, 0.5=0.5 (½) ×2, 0.5>0.2 ×2
    # → (1 + 1 + 0.5 + 1 + 0.5 + 1) / 6 = 5/6
    scores, clean = [0.9, 0.5, 0.5, 0.5, 0.2], [True, True, True, False, False]
    assert auroc(scores, clean) == pytest.approx(5 / 6)
    assert auroc([1.0, 2.0], [True, True]) is None


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = rng.integers(0, 6, size=40).astype(float)  # many ties
        positive = rng.random(40) < 0.6
        assert auroc(scores, positive) == pytest.approx(brute_auroc(scores, positive), abs=1e-12)


def test_noise_separation_constructed():
    observed = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    clean = np.array([0, 1, 2, 1, 1, 0, 0, 1, 2, -1])   # noisy: samples 3 and 5; 9 unknown
    conf = np.array([1.5, 1.2, 0.8, 0.4, 2.0, 0.9, 1.1, 0.95, 1.3, 0.1])
    n = noise_separation(conf, observed, clean)
    assert n["samples"] == 9 and n["excluded_unknown_clean"] == 1
    assert n["noisy"] == 2 and n["noise_rate"] == pytest.approx(2 / 9)
    # σ* < 1 flags samples 2, 3, 5, 7: 2 of 4 flagged are noisy, both noisy found
    t = n["at_threshold"]
    assert t["flagged"] == 4 and t["precision"] == 0.5 and t["recall"] == 1.0
    assert t["f1"] == pytest.approx(2 / 3)
    # the 2 lowest: samples 3 (0.4) and 2 (0.8): one right
    r = n["at_noise_rate"]
    assert r["flagged"] == 2 and r["precision"] == r["recall"] == r["f1"] == 0.5
    assert r["threshold"] == 0.8
    known = clean >= 0
    assert n["auroc"] == pytest.approx(brute_auroc(conf[known], (observed == clean)[known]))


def test_noise_separation_without_noise_or_clean_labels():
    n = noise_separation([0.5, 1.5], [0, 1], [0, 1])
    assert n["auroc"] is None and "no noisy" in n["auroc_reason"]
    assert n["at_threshold"]["recall"] is None and n["at_threshold"]["precision"] == 0.0
    n = noise_separation([0.5, 1.5], [0, 1], [-1, -1])
    assert n["auroc"] is None and n["samples"] == 0 and n["noise_rate"] is None
    assert detection([False, False], [True, False])["precision"] is None


# --- seeds -------------------------------------------------------------------------------------
def test_aggregate_matches_numpy():
    rng = np.random.default_rng(0)
    results = [{"top1": float(a), "few": float(b), "per_class": rng.random(3).tolist(),
                "groups": {"many": [0]}} for a, b in rng.random((4, 2))]
    results[2]["few"] = None
    agg = aggregate(results)
    top1 = [r["top1"] for r in results]
    assert agg["n_seeds"] == 4
    assert agg["mean"]["top1"] == pytest.approx(np.mean(top1))
    assert agg["std"]["top1"] == pytest.approx(np.std(top1, ddof=1))
    few = [r["few"] for r in results if r["few"] is not None]
    assert agg["n"]["few"] == 3 and agg["mean"]["few"] == pytest.approx(np.mean(few))
    pcs = np.array([r["per_class"] for r in results])
    assert agg["per_class_mean"] == pytest.approx(pcs.mean(0).tolist())
    assert "groups" not in agg["mean"]
    single = aggregate(results[:1])
    assert single["std"]["top1"] is None and single["mean"]["top1"] == results[0]["top1"]


def test_merge_seeds_and_format():
    logits, targets = hand_case()
    a = classification_metrics(logits, targets, COUNTS)
    b = classification_metrics(torch.nn.functional.one_hot(targets, 4).float(), targets, COUNTS)
    merged = merge_seeds([a, b])
    assert merged["top1"] == pytest.approx((10 / 16 + 1) / 2)
    assert merged["seeds"]["std"]["top1"] == pytest.approx(np.std([10 / 16, 1], ddof=1))
    assert sum(map(sum, merged["confusion"])) == 32 and merged["groups"] == a["groups"]
    assert format_mean_std(0.55123, 0.00841) == "55.12 ± 0.84"
    assert format_mean_std(0.5, None) == "50.00" and format_mean_std(None, 0.1) == "n/a"


def test_check_disjoint():
    assert check_disjoint([1, 2, 3], [4, 5]) == 0
    with pytest.raises(ManifestError, match=r"2 evaluation samples.*sample ids 2, 3"):
        check_disjoint([1, 2, 3], [2, 3, 9])
    assert check_disjoint([1, 2, 3], [2, 3, 9], allow=True) == 2
