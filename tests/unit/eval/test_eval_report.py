"""write_report on hand-checked results: the numbers in Markdown and JSON, and valid PNGs."""

import json

import numpy as np
import pytest
import torch

from ltscale.eval.aggregate import merge_seeds
from ltscale.eval.metrics import classification_metrics
from ltscale.eval.noise import noise_separation
from ltscale.eval.report import write_report
from tests.unit.eval.test_eval_metrics import COUNTS, hand_case

CLASSES = ["cat", "dog", "emu", "yak"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results():
    logits, targets = hand_case()
    perfect = torch.nn.functional.one_hot(targets, 4).float()
    return {"hand": classification_metrics(logits, targets, COUNTS),
            "perfect": classification_metrics(perfect, targets, COUNTS)}


def check_pngs(paths):
    for key in ("per_class", "shots", "confusion", "reliability"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, key
    assert not list(paths["md"].parent.glob("*.partial"))


def test_report_numbers_json_and_plots(tmp_path, results):
    paths = write_report(tmp_path / "r", "hand report", results, CLASSES, COUNTS, {"seed": 0})
    assert set(paths) == {"md", "json", "per_class", "shots", "confusion", "reliability"}
    assert len(set(paths.values())) == len(paths)  # each file logged once
    md = paths["md"].read_text()
    # top-1 62.50, many 100, medium 62.50, few 25, thirds 87.50 / 50 / 25, balanced 62.50
    assert ("| hand | 62.50 | n/a | 100.00 | 62.50 | 25.00 | 87.50 | 50.00 | 25.00 | 62.50 |"
            in md)
    assert "| perfect | 100.00 |" in md
    assert "| dog | 100 | 4 | medium / frequent ⅓ | 75.00 | 100.00 |" in md
    assert "| yak | 19 | 4 | few / rare ⅓ | 25.00 | 100.00 |" in md
    assert "Noisy-vs-clean" not in md
    back = json.loads(paths["json"].read_text())
    assert back["results"]["hand"]["per_class"] == [1.0, 0.75, 0.5, 0.25]
    assert back["results"]["hand"]["groups"] == {"many": [0], "medium": [1, 2], "few": [3]}
    assert back["train_counts"] == COUNTS and back["classes"] == CLASSES
    check_pngs(paths)


def test_noise_section_and_seed_aggregates(tmp_path, results):
    observed = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    clean = np.array([0, 1, 2, 1, 1, 0, 0, 1, 2, -1])
    conf = np.array([1.5, 1.2, 0.8, 0.4, 2.0, 0.9, 1.1, 0.95, 1.3, 0.1])
    noise = noise_separation(conf, observed, clean)
    merged = {"hand": merge_seeds([results["hand"], results["perfect"]])}
    paths = write_report(tmp_path, "seeds", merged, CLASSES, COUNTS, {}, noise=noise)
    md = paths["md"].read_text()
    assert "## Noisy-vs-clean separation" in md
    assert f"{noise['auroc']:.4f}" in md
    assert "| — | 9 | 22.22 |" in md and "| σ* < 1 | 4 | 50.00 | 100.00 | 66.67 |" in md
    assert "1 samples with an unknown clean label excluded" in md
    # top-1 over the two "seeds": mean 81.25, sample std 26.52
    assert "| hand (2 seeds) | 81.25 ± 26.52 |" in md
    back = json.loads(paths["json"].read_text())
    assert back["noise"]["auroc"] == pytest.approx(noise["auroc"])
    assert back["results"]["hand"]["seeds"]["n_seeds"] == 2
    check_pngs(paths)


def test_many_classes_with_absent_and_untrained_classes(tmp_path):
    C = 60
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, C - 1, (600,), generator=g)  # the last class never in the test set
    logits = torch.randn(600, C, generator=g)
    counts = [int(c) for c in np.linspace(500, 0, C)]  # one class without training images
    m = classification_metrics(logits, targets, counts)
    paths = write_report(tmp_path, "60 classes", {"random": m}, [f"c{i}" for i in range(C)],
                         counts, {})
    back = json.loads(paths["json"].read_text())  # strict JSON: the absent class is null
    assert back["results"]["random"]["per_class"][-1] is None
    check_pngs(paths)
