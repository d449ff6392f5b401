"""Instance-dependent (part-dependent, Xia et al. 2020) label noise over real shards: 3,000
CIFAR-format training images built from two visual templates, so that samples of one class differ
in their features in a known way."""

import numpy as np
import pytest

from ltscale.core.errors import ManifestError
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec, NoiseSpec
from ltscale.data.manifest_stats import format_stats, manifest_stats
from ltscale.data.noise import transition_counts, transition_matrix
from ltscale.data.noise_idn import flip_distribution, truncated_normal
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from tests.unit.data.test_manifest import fake_index
from tests.unit.data.test_sources_cifar import C10_NAMES, C10_TRAIN, dump

PER_BATCH = 600


def group_of(position):
    return (position // 10) % 2  # which template a training image is drawn from


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("idn")
    raw = root / "cifar-10-batches-py"
    raw.mkdir()
    rng = np.random.default_rng(5)
    templates = rng.integers(30, 226, (2, 3072))
    dump(raw / "batches.meta", {b"label_names": [n.encode() for n in C10_NAMES]})
    for b, name in enumerate(C10_TRAIN + ["test_batch"]):
        n = PER_BATCH if name != "test_batch" else 10
        pos = np.arange(n) + b * PER_BATCH
        data = templates[group_of(pos)] + rng.integers(-20, 21, (n, 3072))
        dump(raw / name, {b"labels": [int(p % 10) for p in pos],
                          b"data": np.clip(data, 0, 255).astype(np.uint8)})
    return build_shards(open_source("cifar10", raw), root / "ds", source_kind="cifar10",
                        source_path=str(raw), progress=False)


def _idn(index, rate=0.4, seed=0, std=0.1):
    return build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural"), seed=seed,
                                              noise=NoiseSpec("idn", rate, std=std)))


@pytest.fixture(scope="module")
def m40(shards):
    return _idn(shards)


def test_realised_rate_is_near_the_target_and_recorded(m40):
    lab = m40.mask("labeled")
    assert lab.sum() == 5 * PER_BATCH
    assert m40.header["noise_rate"] == pytest.approx(0.4, abs=0.05)
    source = m40.header["noise_source"]
    assert source["kind"] == "idn" and source["mean_flip_probability"] == pytest.approx(0.4,
                                                                                       abs=0.01)
    stats = manifest_stats(m40)
    assert stats["noise_rate"] == m40.header["noise_rate"]
    assert "instance-dependent" in stats["noise_convention"]


def test_deterministic_under_the_seed(shards, m40):
    again = _idn(shards)
    np.testing.assert_array_equal(again.observed, m40.observed)
    assert again.hash == m40.hash
    other = _idn(shards, seed=1)
    assert other.hash != m40.hash and (other.observed != m40.observed).mean() > 0.2


def test_flip_targets_depend_on_the_image(shards, m40):
    """Same class, two kinds of image: each kind's flips concentrate on its own targets (a flip
    independent of the features would spread over the nine other classes alike)."""
    lab = m40.mask("labeled")
    ids, clean, observed = m40.ids[lab], m40.clean[lab], m40.observed[lab]
    pos = np.array([int(str(k).split("-")[1]) for k in shards.key[ids]])
    differ = 0
    for y in range(10):
        modes = []
        for g in (0, 1):
            flipped = observed[(clean == y) & (group_of(pos) == g) & (observed != clean)]
            counts = np.bincount(flipped, minlength=10)
            assert counts.max() / counts.sum() > 0.4, (y, g, counts)
            modes.append(int(counts.argmax()))
        differ += modes[0] != modes[1]
    assert differ >= 5


def test_flip_probabilities_vary_within_a_class():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((50, 64)).astype(np.float32)
    q = truncated_normal(rng, 0.3, 0.1, 50)
    assert q.min() >= 0 and q.max() <= 1 and q.std() > 0.05
    p = flip_distribution(features, 2, q, 10, seed=0)
    np.testing.assert_allclose(p.sum(1), 1)
    np.testing.assert_allclose(p[:, 2], 1 - q)  # each sample flips with its own rate
    others = np.delete(p, 2, axis=1) / q[:, None]
    assert np.abs(others - others.mean(0)).max() > 0.2  # and to its own targets


def test_transition_matrix_in_stats_matches_the_labels(m40):
    stats = manifest_stats(m40)
    lab = m40.mask("labeled")
    counts = np.zeros((10, 10))
    np.add.at(counts, (m40.clean[lab], m40.observed[lab]), 1)
    np.testing.assert_allclose(stats["transition_matrix"],
                               counts / counts.sum(1, keepdims=True), atol=1e-4)
    dense = np.zeros((10, 10))
    for a, b, n in stats["transition_counts"]:
        dense[a, b] = n
    np.testing.assert_array_equal(dense, counts)
    assert "transition matrix T[clean, observed]" in format_stats(stats)


def test_many_classes_print_a_summary_and_keep_the_full_matrix_in_json():
    index = fake_index(per_class=40, classes=30)
    m = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural"),
                                           noise=NoiseSpec("sym", 0.3, convention="others")))
    stats = manifest_stats(m)
    text = format_stats(stats)
    assert "transition matrix (30 classes; the full matrix is in --json)" in text
    pairs = np.array(stats["transition_counts"])
    np.testing.assert_allclose(transition_matrix(pairs, 30), stats["transition_matrix"],
                               atol=1e-4)
    np.testing.assert_array_equal(pairs, transition_counts(m.clean, m.observed, 30))
    top = stats["transition_summary"]["top_flips"]
    assert len(top) == 10 and top[0]["count"] >= top[-1]["count"]


def test_zero_rate_and_bad_parameters(shards):
    m = _idn(shards, rate=0.0)
    assert m.header["noise_rate"] == 0.0
    assert NoiseSpec.parse("idn:0.2:0.05") == NoiseSpec("idn", 0.2, std=0.05)
    assert NoiseSpec.parse("idn:0.2").text() == "idn:0.2"
    for bad, match in [("idn:1.5", "rate must be in"), ("idn:-0.1", "rate must be in"),
                       ("idn:0.4:0", "spread must be in"), ("idn:0.4:2", "spread must be in"),
                       ("idn:x", "is not a number"), ("idn", "not understood"),
                       ("idn:0.1:0.1:0.1", "not understood")]:
        with pytest.raises(ManifestError, match=match):
            NoiseSpec.parse(bad)
    with pytest.raises(ManifestError, match="at least two classes"):
        build_manifest(fake_index(per_class=5, classes=1),
                       ManifestSpec(imbalance=ImbalanceSpec("natural"), noise=NoiseSpec("idn", 0.3)))
