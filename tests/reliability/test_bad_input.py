"""Bad input is refused before any work, with an error naming the key, file or sample.

Through the real entry points: the ``ltscale`` CLI (exit status 2 and a one-paragraph message,
no traceback), the training job of this tier, and the checkpoint and encoder readers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ltscale.cli import main as cli
from ltscale.core.errors import CheckpointError, ManifestError
from ltscale.data.manifest import Manifest, _content_hash
from ltscale.engine.backend import LocalBackend
from ltscale.models.files import load_encoder
from tests.conftest import jpeg_bytes, make_jpeg_dataset
from tests.reliability import train
from tests.reliability.conftest import Data, read_steps
from tests.reliability.safety import write_tar

pytestmark = pytest.mark.reliability


def _recipe(tmp_path: Path, data: Data, **sections) -> Path:
    raw = {"name": "bad-input", "seed": 0, "output_dir": str(tmp_path / "run"),
           "data": {"source": {"kind": "imagefolder", "path": str(data.shards.parent / "images")},
                    "shards": str(data.shards), "image_size": 16, "channels": 3,
                    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
           "manifest": {"file": str(data.manifest)},
           "pretrain": {"method": {"name": "simsiam"}, "backbone": {"name": "resnet_tiny"},
                        "epochs": 1, "batch_size": 8, "workers": 0,
                        "knn": {"enabled": False}}}
    for key, value in sections.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _pretrain(recipe: Path, capsys, *overrides: str) -> str:
    rc = cli(["pretrain", str(recipe), "--no-track", *overrides])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


def _no_training(tmp_path: Path) -> None:
    assert not list((tmp_path / "run").rglob("checkpoint-*.pt"))
    assert not list((tmp_path / "run").rglob("encoder.pt"))


# --- recipes --------------------------------------------------------------------------------------
def test_unknown_recipe_key_is_named_by_its_dotted_path(clean_data, tmp_path, capsys):
    recipe = _recipe(tmp_path, clean_data, pretrain__optim={"name": "sgd", "lrr": 0.1})
    err = _pretrain(recipe, capsys)
    assert "pretrain.optim.lrr" in err and "unknown key" in err
    assert not (tmp_path / "run").exists()  # refused before anything was created
    err = _pretrain(_recipe(tmp_path, clean_data), capsys, "pretrain.optim.momentumm=0.8")
    assert "pretrain.optim.momentumm" in err


def test_wrong_type_in_a_recipe_is_named_by_its_dotted_path(clean_data, tmp_path, capsys):
    err = _pretrain(_recipe(tmp_path, clean_data, pretrain__epochs="many"), capsys)
    assert "pretrain.epochs" in err
    err = _pretrain(_recipe(tmp_path, clean_data), capsys, "pretrain.batch_size=[1, 2]")
    assert "pretrain.batch_size" in err
    assert not (tmp_path / "run").exists()


def test_a_recipe_naming_a_missing_manifest_file_stops_before_training(clean_data, tmp_path,
                                                                       capsys):
    missing = tmp_path / "nowhere" / "m.npz"
    err = _pretrain(_recipe(tmp_path, clean_data, manifest__file=str(missing)), capsys)
    assert f"manifest not found: {missing}" in err
    _no_training(tmp_path)


def test_a_recipe_naming_missing_shards_and_source_stops_before_training(clean_data, tmp_path,
                                                                         capsys):
    recipe = _recipe(tmp_path, clean_data, data__shards=str(tmp_path / "no-shards"),
                     data__source__path=str(tmp_path / "no-images"),
                     manifest={"imbalance": "none"})
    err = _pretrain(recipe, capsys)
    assert str(tmp_path / "no-images") in err and "not found" in err
    assert not (tmp_path / "no-shards").exists()
    _no_training(tmp_path)


def test_a_manifest_of_other_shards_is_refused(clean_data, tmp_path, capsys):
    other = Data(*make_jpeg_dataset(tmp_path / "other", 4))
    err = _pretrain(_recipe(tmp_path, clean_data, manifest__file=str(other.manifest)), capsys)
    assert "was built from index" in err and str(clean_data.shards) in err
    _no_training(tmp_path)
    with pytest.raises(ManifestError, match="was built from index"):
        train.main(["--data", str(clean_data.shards), "--manifest", str(other.manifest),
                    "--out", str(tmp_path / "job")])
    assert read_steps(tmp_path / "job") == []


def test_a_manifest_edited_after_it_was_made_is_refused(clean_data, tmp_path):
    with np.load(clean_data.manifest) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["observed"] = arrays["observed"].copy()
    arrays["observed"][0] = (arrays["observed"][0] + 1) % 3
    edited = tmp_path / "edited.npz"
    np.savez(edited, **arrays)
    with pytest.raises(ManifestError, match=rf"{edited}: content does not match its recorded hash"):
        Manifest.load(edited)


# --- labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", [3, -2])
def test_a_manifest_label_outside_the_classes_is_refused_before_training(clean_data, tmp_path,
                                                                         label):
    """A manifest whose hash was recomputed over an impossible label (a hand-made file)."""
    m = Manifest.load(clean_data.manifest)
    observed = m.observed.copy()
    observed[5] = label
    header = dict(m.header)
    header["hash"] = _content_hash(m.ids, observed, m.clean, m.role, header)
    bad = Manifest(m.ids, observed, m.clean, m.role, header, m.transition)
    path = tmp_path / "bad.npz"
    bad.save(path)
    with pytest.raises(ManifestError, match=rf"{path}: .*label {label} .*3 classes"):
        train.main(["--data", str(clean_data.shards), "--manifest", str(path),
                    "--out", str(tmp_path / "job")])
    assert read_steps(tmp_path / "job") == []


@pytest.mark.parametrize("label,classes", [("-1", None), ("7", 3)])
def test_a_shard_label_outside_the_classes_stops_data_build(tmp_path, capsys, label, classes):
    rng = np.random.default_rng(0)
    members = [(f"s{i}.jpg", jpeg_bytes(rng, i % 3)) for i in range(3)]
    members += [(f"s{i}.cls", str(i % 3).encode()) for i in range(2)] + [("s2.cls", label.encode())]
    write_tar(tmp_path / "in" / "train-0.tar", members)
    options = []
    if classes:
        (tmp_path / "classes.txt").write_text("a\nb\nc\n")
        options = ["--option", f"classes={tmp_path / 'classes.txt'}"]
    rc = cli(["data", "build", "webdataset", str(tmp_path / "in"), "--out",
              str(tmp_path / "out"), *options])
    err = capsys.readouterr().err
    assert rc == 2 and "label" in err and label in err, err
    assert not (tmp_path / "out").exists()


# --- checkpoints of another architecture ----------------------------------------------------------
def test_a_training_checkpoint_of_another_architecture_is_refused_naming_the_file(
        clean_data, tmp_path):
    out = tmp_path / "job"
    train.main(["--data", str(clean_data.shards), "--manifest", str(clean_data.manifest),
                "--out", str(out), "--epochs", "1", "--workers", "0"])
    newest = out / "ck-000000006.pt"
    saved = torch.load(newest, weights_only=True)
    saved["model"] = torch.nn.Linear(4, 3).state_dict()  # same experiment, other network
    torch.save(saved, newest)
    with pytest.raises(CheckpointError, match=rf"{newest}: .*does not fit"):
        train.main(["--data", str(clean_data.shards), "--manifest", str(clean_data.manifest),
                    "--out", str(out), "--epochs", "2", "--workers", "0"])
    with pytest.raises(CheckpointError, match=rf"{newest}"):
        LocalBackend("cpu").load(newest, torch.nn.Linear(5, 3),
                                 torch.optim.SGD(torch.nn.Linear(5, 3).parameters(), lr=0.1))


def test_an_encoder_file_of_another_architecture_is_refused(tmp_path):
    from ltscale.models import create_backbone

    enc = create_backbone("resnet_tiny", in_chans=3, cifar_stem=True)
    path = tmp_path / "encoder.pt"
    torch.save({"backbone": "resnet_tiny", "cifar_stem": True, "in_chans": 3,
                "feat_dim": int(enc.feat_dim), "state_dict": enc.state_dict()}, path)
    with pytest.raises(CheckpointError, match="holds a resnet_tiny encoder but the recipe's "
                                              "pretrain.backbone.name is cifar_resnet8"):
        load_encoder(path, "cifar_resnet8", 3)
    with pytest.raises(CheckpointError, match="for 3-channel images"):
        load_encoder(path, "resnet_tiny", 1)
    shutil.copy(path, tmp_path / "copy.pt")  # the matching request loads, key for key
    assert json.dumps(sorted(load_encoder(tmp_path / "copy.pt", "resnet_tiny", 3)
                             .state_dict())) == json.dumps(sorted(enc.state_dict()))


def test_an_encoder_file_with_weights_of_other_shapes_is_refused(tmp_path):
    from ltscale.models import create_backbone

    enc = create_backbone("resnet_tiny", in_chans=3, cifar_stem=True)
    weights = enc.state_dict()
    name = next(k for k, v in weights.items() if v.ndim == 4)  # the first conv, cut in half
    weights[name] = weights[name][: weights[name].shape[0] // 2]
    path = tmp_path / "encoder.pt"
    torch.save({"backbone": "resnet_tiny", "cifar_stem": True, "in_chans": 3,
                "feat_dim": int(enc.feat_dim), "state_dict": weights}, path)
    with pytest.raises(CheckpointError, match=rf"encoder.pt: weights do not fit backbone "
                                              rf"resnet_tiny \(size mismatch for {name}"):
        load_encoder(path, "resnet_tiny", 3)
