"""Human label noise (CIFAR-10N / CIFAR-100N) over CIFAR shards, on miniature label files written
in the public format: a dict of numpy int64 arrays, one label per training image in batch order,
saved with torch.save (CIFAR-10_human.pt keys clean_label, aggre_label, worse_label,
random_label1..3; CIFAR-100_human.pt keys clean_label, noisy_label, noisy_coarse_label,
clean_coarse_label)."""

import json
import zipfile

import numpy as np
import pytest
import torch

from ltscale.cli import main
from ltscale.core.errors import ManifestError
from ltscale.data.manifest import Manifest, build_manifest
from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec, NoiseSpec
from ltscale.data.manifest_stats import manifest_stats
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from tests.unit.data.test_sources_cifar import write_cifar10, write_cifar100

PER_BATCH = 20          # 100 training images
N10 = 5 * PER_BATCH


def _shards(tmp_path, kind="cifar10"):
    raw = (write_cifar10(tmp_path / "raw", per_batch=PER_BATCH) if kind == "cifar10"
           else write_cifar100(tmp_path / "raw", n_train=40))
    return build_shards(open_source(kind, raw), tmp_path / "ds", source_kind=kind,
                        source_path=str(raw), progress=False)


def _train_labels(index):
    """The dataset's labels in CIFAR training order (what clean_label holds)."""
    train = index.split_ids("train")
    pos = [int(str(k).split("-")[1]) for k in index.key[train]]
    out = np.empty(len(train), np.int64)
    out[pos] = index.label[train]
    return out


def _c10n(clean, seed=0):
    rng = np.random.default_rng(seed)
    noisy = lambda p: np.where(rng.random(len(clean)) < p,  # noqa: E731
                               rng.integers(0, 10, len(clean)), clean).astype(np.int64)
    return {"clean_label": clean.astype(np.int64), "aggre_label": noisy(0.1),
            "worse_label": noisy(0.4), "random_label1": noisy(0.2),
            "random_label2": noisy(0.2), "random_label3": noisy(0.2)}


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.fixture
def c10(tmp_path):
    index = _shards(tmp_path)
    labels = _c10n(_train_labels(index))
    return index, labels, _save(tmp_path / "CIFAR-10_human.pt", labels)


def _spec(path, label_set="aggre", **kw):
    return ManifestSpec(noise=NoiseSpec("human", file=str(path), label_set=label_set), **kw)


@pytest.mark.parametrize("label_set,key", [("aggre", "aggre_label"), ("worse", "worse_label"),
                                           ("worst", "worse_label"), ("random2", "random_label2"),
                                           ("clean", "clean_label")])
def test_observed_labels_come_from_the_file_by_training_position(c10, label_set, key):
    index, labels, path = c10
    m = build_manifest(index, _spec(path, label_set, imbalance=ImbalanceSpec("exp", 5)))
    lab = m.mask("labeled")
    pos = np.array([int(str(k).split("-")[1]) for k in index.key[m.ids[lab]]])
    np.testing.assert_array_equal(m.observed[lab], labels[key][pos])
    np.testing.assert_array_equal(m.clean[lab], index.label[m.ids[lab]])
    assert m.header["noise_source"]["key"] == key
    stats = manifest_stats(m)
    assert stats["noise_rate"] == pytest.approx(float((labels[key][pos] != m.clean[lab]).mean()))
    assert stats["noise_source"]["sha256"] == m.header["noise_source"]["sha256"]


def test_file_contents_are_part_of_the_manifest_hash(c10, tmp_path):
    index, labels, path = c10
    a = build_manifest(index, _spec(path, imbalance=ImbalanceSpec("exp", 5)))
    assert build_manifest(index, _spec(path, imbalance=ImbalanceSpec("exp", 5))).hash == a.hash
    # a label of a sample the manifest does not use changes the file, so the manifest's hash
    unused = sorted(set(range(N10)) - {int(str(k).split("-")[1]) for k in index.key[a.ids]})[0]
    other = {k: v.copy() for k, v in labels.items()}
    other["aggre_label"][unused] = (other["aggre_label"][unused] + 1) % 10
    _save(path, other)
    b = build_manifest(index, _spec(path, imbalance=ImbalanceSpec("exp", 5)))
    np.testing.assert_array_equal(a.observed, b.observed)
    assert b.hash != a.hash
    a.save(tmp_path / "m.npz")
    assert Manifest.load(tmp_path / "m.npz").header["noise_source"] == a.header["noise_source"]


def test_numpy1_files_and_npz_copies_load(c10, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index, labels, path = c10
    # the public files were pickled under numpy 1, whose arrays name numpy.core.multiarray
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in members[pkl] or b"numpy.core.multiarray" in members[pkl]
    members[pkl] = members[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    old = tmp_path / "numpy1.pt"
    with zipfile.ZipFile(old, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    np.savez(tmp_path / "c10n.npz", **labels)
    expected = build_manifest(index, _spec(path)).observed
    for other in (old, tmp_path / "c10n.npz"):
        np.testing.assert_array_equal(build_manifest(index, _spec(other)).observed, expected)
    # before torch 2.6 the archive's pickle goes through the CIFAR allow-list unpickler
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    for other in (path, old):
        np.testing.assert_array_equal(build_manifest(index, _spec(other)).observed, expected)
    evil = tmp_path / "evil.pt"
    torch.save(dict(labels, aggre_label=_Exploit()), evil)
    _expect(index, evil, "evil.pt: not a readable CIFAR-N label file")
    assert not (tmp_path / "EXPLOITED").exists()


def test_cifar100n_noisy_labels(tmp_path):
    index = _shards(tmp_path, "cifar100")
    clean = _train_labels(index)
    noisy = (clean + np.arange(len(clean)) % 2).astype(np.int64) % 100
    path = _save(tmp_path / "CIFAR-100_human.pt", {
        "clean_label": clean, "noisy_label": noisy, "clean_coarse_label": clean // 5,
        "noisy_coarse_label": noisy // 5})
    m = build_manifest(index, _spec(path, "noisy", imbalance=ImbalanceSpec("natural")))
    assert m.header["noise_rate"] == pytest.approx(0.5)
    with pytest.raises(ManifestError, match="no key 'aggre_label'.*CIFAR-100N file"):
        build_manifest(index, _spec(path, "aggre", imbalance=ImbalanceSpec("natural")))


def test_cli_make_and_stats(c10, tmp_path, capsys):
    index, labels, path = c10
    out = tmp_path / "m.npz"
    assert main(["manifest", "make", str(index.root), "--imbalance", "natural", "--noise",
                 f"human:worse:{path}", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["manifest", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["noise_source"]["file"] == str(path)
    assert stats["noise_rate"] == pytest.approx(float((labels["worse_label"] !=
                                                       labels["clean_label"]).mean()))
    assert main(["manifest", "make", str(index.root), "--noise", f"human:worse:{path}",
                 "--out", str(path)]) == 2  # never over the label file
    assert "human:worse:" in NoiseSpec.parse(f"human:worse:{path}").text()


def _expect(index, path, match, **kw):
    with pytest.raises(ManifestError, match=match):
        build_manifest(index, _spec(path, **kw))


def test_bad_files_are_refused_by_name(c10, tmp_path):
    index, labels, _ = c10
    _expect(index, tmp_path / "nope.pt", "human noise file not found: .*nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a torch file at all")
    _expect(index, garbage, "garbage.pt: not a readable CIFAR-N label file")
    short = {k: v[:-1] for k, v in labels.items()}
    _expect(index, _save(tmp_path / "short.pt", short),
            "short.pt: key 'aggre_label' holds 99 labels but the training set .* has 100")
    wide = dict(labels, aggre_label=labels["aggre_label"] + 5)
    _expect(index, _save(tmp_path / "wide.pt", wide),
            "wide.pt: key 'aggre_label' has label 1[0-4] at training position .* outside the "
            "dataset's 10 classes")
    floats = dict(labels, aggre_label=labels["aggre_label"].astype(np.float64))
    _expect(index, _save(tmp_path / "floats.pt", floats), "should be a 1-D array of integer")
    shuffled = dict(labels, clean_label=np.roll(labels["clean_label"], 1))
    _expect(index, _save(tmp_path / "shuffled.pt", shuffled),
            "'clean_label' disagrees with the labels of")
    _expect(index, _save(tmp_path / "list.pt", [1, 2]), "expected a dict of label arrays")
    _expect(index, _save(tmp_path / "nokey.pt", {"clean_label": labels["clean_label"]}),
            r"no key 'aggre_label' for label set aggre; its keys: clean_label")


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch EXPLOITED",))


def test_a_file_that_would_run_code_is_refused(c10, tmp_path, monkeypatch):
    index, labels, _ = c10
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save(dict(labels, aggre_label=_Exploit()), evil)
    _expect(index, evil, "evil.pt: not a readable CIFAR-N label file")
    assert not (tmp_path / "EXPLOITED").exists()


def test_wrong_dataset_split_and_spec(c10, tmp_path, tiny_idx):
    index, labels, path = c10
    _expect(index, path, "labels the CIFAR training set only", split="test",
            imbalance=ImbalanceSpec("natural"))
    other = build_shards(open_source("idx", tiny_idx), tmp_path / "idx-ds", source_kind="idx",
                         source_path=str(tiny_idx), progress=False)
    _expect(other, path, "needs a CIFAR-10 or CIFAR-100 dataset .* built from idx")
    with pytest.raises(ManifestError, match="label set 'best' unknown"):
        NoiseSpec.parse(f"human:best:{path}")
    with pytest.raises(ManifestError, match="not understood"):
        NoiseSpec.parse("human:aggre")


def test_older_kinds_record_the_same_spec_and_recipes_take_a_mapping():
    from pydantic import ValidationError

    from ltscale.config.schema import ManifestCfg

    # the new noise fields stay out of the recorded spec of the older kinds: same content hash
    for text in ("sym:0.4", "asym:0.2:cifar10", "none", "real"):
        noise = ManifestSpec(noise=NoiseSpec.parse(text)).to_dict()["noise"]
        assert set(noise) == {"kind", "rate", "convention", "mapping"}
    cfg = ManifestCfg(noise={"kind": "human", "label_set": "aggre", "file": "/d/CIFAR-10_human.pt"})
    assert cfg.noise == "human:aggre:/d/CIFAR-10_human.pt"
    assert ManifestCfg(noise={"kind": "idn", "rate": 0.4}).noise == "idn:0.4"
    for bad, match in [({"kind": "idn", "rat": 0.4}, "a mapping takes kind"),
                       ({"kind": "human", "label_set": "aggre"}, "needs the CIFAR-N label file"),
                       ({"kind": "idn", "rate": 2}, "rate must be in")]:
        with pytest.raises(ValidationError, match=match):
            ManifestCfg(noise=bad)
