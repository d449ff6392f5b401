import json

import numpy as np
import pytest

from ltscale.core.errors import ManifestError
from ltscale.data.index import ShardIndex
from ltscale.data.manifest import Manifest, build_manifest, longtail_counts
from ltscale.data.manifest_spec import (
    EvalSelection,
    ImbalanceSpec,
    ManifestSpec,
    NoiseSpec,
    UnlabeledSpec,
)
from ltscale.data.manifest_stats import format_diff, manifest_diff, manifest_stats

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_index(per_class=600, classes=10, names=None, splits=None, extra=None) -> ShardIndex:
    label = np.repeat(np.arange(classes), per_class)
    n = len(label)
    split = np.zeros(n, np.int8) if splits is None else splits
    keys = np.char.add("k", np.arange(n).astype("U8"))
    return ShardIndex(shards=["s.tar"], splits=["train", "test", "ood"],
                      classes=names or [str(c) for c in range(classes)],
                      columns={"key": keys, "split": split, "shard": np.zeros(n, np.int32),
                               "offset": np.arange(n), "size": np.ones(n), "ext": np.full(n, "png"),
                               "label": label, "path": keys},
                      extra=extra, extra_classes={k: None for k in (extra or {})})


def test_cifar_lt_counts_match_the_published_sizes():
    c10 = longtail_counts(5000, 10, ImbalanceSpec("exp", 100))
    assert c10 == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(c10) == 12406
    assert sum(longtail_counts(500, 100, ImbalanceSpec("exp", 100))) == 10847
    m = build_manifest(fake_index(5000), ManifestSpec(imbalance=ImbalanceSpec("exp", 100)))
    assert m.class_counts("clean").tolist() == c10 and len(m) == 12406


def test_other_profiles():
    assert longtail_counts(5000, 10, ImbalanceSpec("step", 10)) == [5000] * 5 + [500] * 5
    assert longtail_counts(100, 10, ImbalanceSpec("step", 10, mu=0.3)) == [100] * 7 + [10] * 3
    p = longtail_counts(1280, 1000, ImbalanceSpec("pareto", 256))
    assert p[0] == 1280 and p[-1] == 5 and all(a >= b for a, b in zip(p, p[1:]))
    index = fake_index(50)
    natural = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural")))
    assert len(natural) == 500
    a = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("exp", 10, order="perm"), seed=1))
    b = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("exp", 10, order="perm"), seed=2))
    expected = sorted(longtail_counts(50, 10, ImbalanceSpec("exp", 10)))
    assert sorted(a.class_counts().tolist()) == expected == sorted(b.class_counts().tolist())
    assert a.class_counts().tolist() != b.class_counts().tolist()


def _within(value, expected, p, n, k=5.0):
    # k binomial standard deviations of a proportion p over n trials
    return abs(value - expected) <= k * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("convention", ["all", "others"])
def test_symmetric_noise_rate_and_transition_matrix(convention):
    C, per, nu = 10, 20_000, 0.4
    index = fake_index(per, C)
    m = build_manifest(index, ManifestSpec(noise=NoiseSpec("sym", nu, convention=convention), seed=3))
    N, flips = len(m), int(round(nu * C * per))
    changed = int((m.observed != m.clean).sum())
    T = m.transition_matrix()
    if convention == "all":
        # round(νN) flipped labels each change with probability (C-1)/C: Binomial(flips, (C-1)/C)
        q = (C - 1) / C
        assert abs(changed - flips * q) <= 5 * np.sqrt(flips * q * (1 - q))
        off, diag = nu / C, 1 - nu + nu / C
    else:
        assert changed == flips  # every flip lands on another class
        off, diag = nu / (C - 1), 1 - nu
    # per entry: about Binomial(n_i, p) over the n_i samples of class i
    for i in range(C):
        assert _within(T[i, i], diag, diag, per)
        for j in range(C):
            if j != i:
                assert _within(T[i, j], off, off, per), (i, j, T[i, j])
    assert m.header["noise_rate"] == pytest.approx(changed / N)


def test_asymmetric_cifar10_mapping_is_exact():
    index = fake_index(1000, names=CIFAR10)
    m = build_manifest(index, ManifestSpec(noise=NoiseSpec.parse("asym:0.4:cifar10")))
    T = m.transition_matrix()
    c = {n: i for i, n in enumerate(CIFAR10)}
    for src, dst in [("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"),
                     ("cat", "dog"), ("dog", "cat")]:
        assert T[c[src], c[dst]] == pytest.approx(0.4)
    for unmapped in ("airplane", "automobile", "frog", "horse", "ship"):
        assert T[c[unmapped], c[unmapped]] == 1.0


def test_asymmetric_cifar100_moves_within_the_superclass():
    fine = np.arange(100)
    coarse_of = np.random.default_rng(0).permutation(np.repeat(np.arange(20), 5))
    index = fake_index(20, 100, extra={"coarse_label": np.repeat(coarse_of[fine], 20)})
    m = build_manifest(index, ManifestSpec(noise=NoiseSpec.parse("asym:0.5:cifar100")))
    moved = m.observed != m.clean
    assert moved.sum() == 100 * 10
    assert (coarse_of[m.observed[moved]] == coarse_of[m.clean[moved]]).all()
    for f in range(100):  # the next fine class of the same superclass, cyclically
        members = np.flatnonzero(coarse_of == coarse_of[f])
        nxt = members[(list(members).index(f) + 1) % 5]
        assert set(m.observed[moved & (m.clean == f)]) == {nxt}


def test_user_mapping_and_bad_mapping(tmp_path):
    index = fake_index(100, names=CIFAR10)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"ship": "airplane"}))
    bad.write_text(json.dumps({"ship": "submarine"}))
    m = build_manifest(index, ManifestSpec(noise=NoiseSpec("asym", 1.0, mapping=str(good))))
    assert (m.observed[m.clean == CIFAR10.index("ship")] == 0).all()
    with pytest.raises(ManifestError, match="names class 'submarine'"):
        build_manifest(index, ManifestSpec(noise=NoiseSpec("asym", 0.2, mapping=str(bad))))


def test_real_noise_uses_the_source_labels():
    index = fake_index(10, 3)
    noisy = (index.label + 1) % 3
    noisy[::4] = -1                       # no noisy label: never selected
    index = fake_index(10, 3, extra={"noisy_label": noisy})
    index._cols["label"] = index.label.copy()
    index._cols["label"][1::3] = -1       # clean label unknown
    m = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural"),
                                           noise=NoiseSpec("real")))
    np.testing.assert_array_equal(m.observed, noisy[m.ids])
    assert (noisy[m.ids] >= 0).all() and len(m) == (noisy >= 0).sum()
    np.testing.assert_array_equal(m.clean, index.label[m.ids])
    known = m.clean >= 0
    assert m.header["noise_rate"] == pytest.approx((m.observed[known] != m.clean[known]).mean())
    with pytest.raises(ManifestError, match="noisy_label"):
        build_manifest(fake_index(10, 3), ManifestSpec(noise=NoiseSpec("real")))


def test_roles_few_labels_pool_and_selections():
    C, per = 10, 1000
    split = np.zeros(C * per, np.int8)
    split[np.arange(C * per) % per >= 900] = 1          # 100 test images per class
    split[:300] = 2                                      # an "ood" split inside class 0
    index = fake_index(per, C, splits=split)
    spec = ManifestSpec(imbalance=ImbalanceSpec("exp", 10), max_per_class=200, few_labels=0.01,
                        unlabeled=UnlabeledSpec(multiple=2, ratio=5, relevance=0.9,
                                                ood_split="ood"),
                        val=EvalSelection("train", 20), test=EvalSelection("test"))
    m = build_manifest(index, spec)
    lab_counts = longtail_counts(200, C, spec.imbalance)
    kept = m.class_counts()
    assert kept.tolist() == [max(1, round(0.01 * n)) for n in lab_counts]
    pool = (m.role == 1) & (m.ids >= 0)
    n_labeled = sum(lab_counts)
    leftovers = n_labeled - kept.sum()
    assert pool.sum() == leftovers + round(2 * n_labeled)
    assert m.header["unlabeled_pool"] == {"in_distribution": round(0.9 * 2 * n_labeled),
                                          "out_of_distribution": round(2 * n_labeled)
                                          - round(0.9 * 2 * n_labeled)}
    assert (m.observed[m.role == 1] == -1).all()
    assert len(np.unique(m.ids)) == len(m.ids)           # no sample in two roles
    val_ids, val_y = m.rows("val")
    test_ids, test_y = m.rows("test")
    assert np.bincount(val_y).tolist() == [20] * C and np.bincount(test_y).tolist() == [100] * C
    assert (index.split[test_ids] == 1).all()


def test_bad_specs_and_pool_too_large():
    with pytest.raises(ManifestError, match=">= 1"):
        ImbalanceSpec.parse("exp:0.5")
    with pytest.raises(ManifestError, match=r"\[0, 1\]"):
        NoiseSpec.parse("sym:1.5")
    with pytest.raises(ManifestError, match="not understood"):
        NoiseSpec.parse("gaussian:0.1")
    with pytest.raises(ManifestError, match="needs ood_split"):
        UnlabeledSpec(multiple=1, relevance=0.5)
    with pytest.raises(ManifestError, match="has only 5000 unused samples"):
        build_manifest(fake_index(1000), ManifestSpec(max_per_class=500,
                                                      unlabeled=UnlabeledSpec(multiple=10)))
    with pytest.raises(ManifestError, match=r"class 0 \(0\) needs 700 samples but only 600 are available"):
        build_manifest(fake_index(600), ManifestSpec(max_per_class=700))


def test_deterministic_files_seed_dependence_and_tampering(tmp_path):
    index = fake_index()
    spec = ManifestSpec(imbalance=ImbalanceSpec("exp", 10), noise=NoiseSpec("sym", 0.2), seed=1)
    build_manifest(index, spec).save(tmp_path / "a.npz")
    build_manifest(index, spec).save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    other = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("exp", 10),
                                               noise=NoiseSpec("sym", 0.2), seed=2))
    a = Manifest.load(tmp_path / "a.npz")
    assert other.hash != a.hash and not np.array_equal(other.ids, a.ids)
    a.observed[0] = (a.observed[0] + 1) % 10
    a.save(tmp_path / "t.npz")
    with pytest.raises(ManifestError, match="does not match its recorded hash"):
        Manifest.load(tmp_path / "t.npz")
    with pytest.raises(ManifestError, match="was built from index"):
        Manifest.load(tmp_path / "b.npz").check_index(fake_index(601))


def test_shot_groups_on_edge_counts_and_diff():
    sizes = [101, 100, 20, 19]
    label = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    index = fake_index(1, 4)
    n = len(label)
    index._cols = {**index._cols, "label": label, "split": np.zeros(n, np.int8)}
    m = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural")))
    stats = manifest_stats(m)
    assert stats["shot_groups"] == {"many": 1, "medium": 2, "few": 1}
    assert len(stats["transition_matrix"]) == 4
    other = build_manifest(index, ManifestSpec(imbalance=ImbalanceSpec("natural"),
                                               noise=NoiseSpec("sym", 0.5), seed=4))
    d = manifest_diff(m, other)
    assert d["spec"]["seed"] == [0, 4] and d["labeled_relabeled"] > 0
    assert "spec: identical" in format_diff(manifest_diff(m, m))
