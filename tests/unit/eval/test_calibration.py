"""Expected calibration error against hand computations; per-group ECE; seed pooling; the
reliability diagram in the report."""

import json
import math

import numpy as np
import pytest
import torch

from ltscale.eval.aggregate import merge_seeds
from ltscale.eval.calibration import (
    calibration,
    expected_calibration_error,
    merge_bins,
    reliability_bins,
)
from ltscale.eval.metrics import classification_metrics, scalar_metrics
from ltscale.eval.report import write_report
from tests.unit.eval.test_eval_metrics import COUNTS, hand_case

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def two_class(p: float, n: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` predictions of class 0 with softmax confidence ``p``, ``right`` of them correct."""
    logits = torch.tensor([[math.log(p / (1 - p)), 0.0]] * n)
    targets = torch.tensor([0] * right + [1] * (n - right))
    return logits, targets


def test_perfectly_calibrated_is_zero():
    # confidence 0.75, three of four right; confidence 0.6, three of five right
    a, ta = two_class(0.75, 4, 3)
    b, tb = two_class(0.6, 5, 3)
    assert expected_calibration_error(torch.cat([a, b]), torch.cat([ta, tb])) == pytest.approx(
        0.0, abs=1e-6)  # float32 logits


def test_known_over_confidence():
    # always 90 % sure, right half of the time: ECE 0.4
    logits, targets = two_class(0.9, 10, 5)
    assert expected_calibration_error(logits, targets) == pytest.approx(0.4)
    # two bins, equal weight: |1 - 0.9| and |0.25 - 0.6| -> (0.1 + 0.35) / 2
    a, ta = two_class(0.9, 4, 4)
    b, tb = two_class(0.6, 4, 1)
    assert expected_calibration_error(torch.cat([a, b]), torch.cat([ta, tb])) == pytest.approx(
        0.225)


def test_bins_are_right_closed_and_cover_zero():
    b = reliability_bins([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0], [1, 1, 0, 1], bins=15)
    assert b["count"][0] == 2 and b["count"][1] == 1 and b["count"][14] == 1
    assert sum(b["count"]) == 4 and len(b["edges"]) == 16
    assert b["accuracy"][1] == 0.0 and b["accuracy"][5] is None


def test_groups_from_the_hand_case():
    # one-hot logits: every prediction has confidence e / (e + 3)
    logits, targets = hand_case()
    conf = math.e / (math.e + 3)
    m = classification_metrics(logits, targets, COUNTS)
    assert m["ece"] == pytest.approx(abs(10 / 16 - conf))
    assert m["ece_many"] == pytest.approx(1 - conf)            # class 0: 4 of 4 right
    assert m["ece_medium"] == pytest.approx(abs(5 / 8 - conf))  # classes 1, 2: 5 of 8
    assert m["ece_few"] == pytest.approx(abs(1 / 4 - conf))     # class 3: 1 of 4
    assert sum(m["reliability"]["medium"]["count"]) == 8
    scalars = scalar_metrics(m)
    assert {"ece", "ece_many", "ece_medium", "ece_few"} <= set(scalars)


def test_empty_group_is_none():
    logits, targets = two_class(0.9, 4, 4)
    c = calibration(logits.numpy(), targets.numpy(), {"many": [0, 1], "few": []})
    assert c["ece_few"] is None and c["ece_many"] == pytest.approx(0.1)
    assert sum(c["reliability"]["few"]["count"]) == 0


def test_seed_bins_pool_like_one_run():
    a, ta = two_class(0.9, 4, 4)
    b, tb = two_class(0.9, 6, 1)
    both = calibration(torch.cat([a, b]).numpy(), torch.cat([ta, tb]).numpy(), {})
    parts = [calibration(x.numpy(), t.numpy(), {})["reliability"]["all"]
             for x, t in ((a, ta), (b, tb))]
    pooled = merge_bins(parts)
    assert pooled["count"] == both["reliability"]["all"]["count"]
    np.testing.assert_allclose([v or 0 for v in pooled["accuracy"]],
                               [v or 0 for v in both["reliability"]["all"]["accuracy"]])


def test_report_has_calibration_table_and_reliability_png(tmp_path):
    logits, targets = hand_case()
    m = classification_metrics(logits, targets, COUNTS)
    merged = merge_seeds([m, classification_metrics(logits * 5, targets, COUNTS)])
    paths = write_report(tmp_path, "calibration", {"hand": m, "seeds": merged},
                         ["a", "b", "c", "d"], COUNTS, {})
    md = paths["md"].read_text()
    assert "## Calibration" in md and "| model | ECE | ECE many | ECE medium | ECE few |" in md
    assert f"| hand | {100 * m['ece']:.2f} | {100 * m['ece_many']:.2f} |" in md
    data = paths["reliability"].read_bytes()
    assert paths["reliability"].name == "reliability.png"
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    back = json.loads(paths["json"].read_text())
    assert sum(back["results"]["seeds"]["reliability"]["all"]["count"]) == 32
