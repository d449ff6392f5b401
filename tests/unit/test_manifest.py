import numpy as np
import pytest

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import (ImbalanceSpec, Manifest, ManifestSpec, NoiseSpec,
                                   build_manifest, longtail_counts)
from ltscale.errors import ManifestError


def test_cifar_lt_counts_match_the_published_sizes():
    assert sum(longtail_counts(5000, 10, ImbalanceSpec("exp", 100))) == 12406
    assert sum(longtail_counts(500, 100, ImbalanceSpec("exp", 100))) == 10847
    c10 = longtail_counts(5000, 10, ImbalanceSpec("exp", 100))
    assert c10[0] == 5000 and c10[-1] == 50
    assert longtail_counts(5000, 10, ImbalanceSpec("step", 10)) == [5000] * 5 + [500] * 5


def fake_index(n_per_class=600, classes=10) -> ShardIndex:
    n = n_per_class * classes
    label = np.repeat(np.arange(classes), n_per_class)
    return ShardIndex(key=np.array([f"k{i}" for i in range(n)]), shard=np.zeros(n, np.int32),
                      offset=np.arange(n, dtype=np.int64), size=np.ones(n, np.int64),
                      label=label, split=np.zeros(n, np.int8), shards=["s.tar"],
                      splits=["train"], classes=[str(c) for c in range(classes)])


def test_imbalance_then_noise_keeps_clean_labels_and_realises_the_rate():
    index = fake_index(6000)
    spec = ManifestSpec(imbalance=ImbalanceSpec("exp", 100), noise=NoiseSpec("sym", 0.4), seed=3)
    m = build_manifest(index, spec)
    assert m.class_counts("clean").tolist() == longtail_counts(6000, 10, spec.imbalance)
    np.testing.assert_array_equal(m.clean, index.label[m.ids])
    # 40 % redrawn uniformly over 10 classes: a tenth of them land on the true class again
    assert abs(m.header["noise_rate"] - 0.4 * 0.9) < 0.01
    assert m.header["noise_rate"] == pytest.approx(float((m.observed != m.clean).mean()))


def test_manifest_is_deterministic_and_seed_dependent():
    index = fake_index()
    spec = ManifestSpec(imbalance=ImbalanceSpec("exp", 10), noise=NoiseSpec("sym", 0.2), seed=1)
    a, b = build_manifest(index, spec), build_manifest(index, spec)
    assert a.hash == b.hash and np.array_equal(a.observed, b.observed)
    c = build_manifest(index, ManifestSpec(imbalance=spec.imbalance, noise=spec.noise, seed=2))
    assert c.hash != a.hash


def test_save_load_round_trip_and_tamper_detection(tmp_path):
    m = build_manifest(fake_index(), ManifestSpec(noise=NoiseSpec("sym", 0.5)))
    path = tmp_path / "m.npz"
    m.save(path)
    back = Manifest.load(path)
    assert back.hash == m.hash and np.array_equal(back.observed, m.observed)
    tampered = Manifest(back.ids, back.observed.copy(), back.clean, back.role, back.header)
    tampered.observed[0] = (tampered.observed[0] + 1) % 10
    tampered.save(path)
    with pytest.raises(ManifestError, match="does not match its recorded hash"):
        Manifest.load(path)


def test_manifest_refuses_an_index_it_was_not_built_from():
    m = build_manifest(fake_index(), ManifestSpec())
    other = fake_index(n_per_class=601)
    with pytest.raises(ManifestError, match="was built from index"):
        m.check_index(other)
    m.check_index(fake_index())


def test_unreachable_profile_names_the_class():
    with pytest.raises(ManifestError, match="class 0 .* needs 700"):
        build_manifest(fake_index(), ManifestSpec(max_per_class=700))


@pytest.mark.parametrize("text", ["exp", "exp:0.5", "log:10", "exp:abc"])
def test_bad_imbalance_text(text):
    with pytest.raises(ManifestError, match="imbalance"):
        ImbalanceSpec.parse(text)


@pytest.mark.parametrize("text", ["sym", "sym:1.5", "pair:0.2"])
def test_bad_noise_text(text):
    with pytest.raises(ManifestError, match="noise"):
        NoiseSpec.parse(text)


def test_million_sample_manifest_builds_fast():
    import time

    index = fake_index(n_per_class=100_000)
    t = time.perf_counter()
    m = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("exp", 100),
                                           noise=NoiseSpec("sym", 0.4)))
    assert len(m) == sum(longtail_counts(100_000, 10, ImbalanceSpec("exp", 100)))
    assert time.perf_counter() - t < 5  # generous: the design goal is well under a second
