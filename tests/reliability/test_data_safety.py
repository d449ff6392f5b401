"""Nothing a user owns is destroyed: every writer checks its output against its inputs, and only
replaces what it can prove it wrote (a dataset card carrying ltscale's marker and listing its
files; an ltscale manifest). Each case hashes every input file before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltscale.cli import main as cli
from ltscale.data.ownership import OWNER_MARKER
from tests.conftest import JPEG_CLASSES, jpeg_bytes, make_jpeg_dataset
from tests.reliability.safety import refused, snapshot, write_tar

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """ImageFolder tree + ltscale dataset + manifest (2 images per class), and a folder of
    foreign webdataset tars."""
    root = tmp_path_factory.mktemp("safety")
    make_jpeg_dataset(root, 4, shard_bytes=4000)
    rng = np.random.default_rng(1)
    for s in range(2):
        members = []
        for i in range(3):
            members += [(f"w{s}_{i}.jpg", jpeg_bytes(rng, i % 3)), (f"w{s}_{i}.cls", str(i).encode())]
        write_tar(root / "tars" / f"train-{s}.tar", members)
    (root / "tars" / "README.txt").write_text("my shards, do not lose them\n")
    return root


@pytest.fixture
def w(base, tmp_path) -> Path:
    """A private copy of ``base`` for one test."""
    shutil.copytree(base, tmp_path / "w")
    return tmp_path / "w"


def _build(kind, src, out, *extra):
    return [str(a) for a in ["data", "build", kind, src, "--out", out, *extra]]


# --- data build: --out against the source ------------------------------------------------------
@pytest.mark.parametrize("where,needle", [
    ("src", "is the input"),            # --out SRC
    ("parent", "contains the input"),   # --out a parent of SRC
    ("inside", "lies inside the input"),  # --out SRC/sub
    ("link", "is the input"),           # --out a symlink to SRC
])
@pytest.mark.parametrize("kind,src", [("webdataset", "tars"), ("imagefolder", "images")])
def test_data_build_out_overlapping_the_source_is_refused(w, capsys, where, needle, kind, src):
    source = w / src
    out = {"src": source, "parent": w, "inside": source / "sub", "link": w / "link"}[where]
    if where == "link":
        os.symlink(source, out)
    before = snapshot(w)
    err = refused(capsys, _build(kind, source, out, "--overwrite"), needle, str(source))
    assert "--overwrite" not in err.replace(str(out), "")  # never invites a destroying retry
    assert snapshot(w) == before


def test_data_build_out_over_a_source_option_file_is_refused(w, capsys):
    classes = w / "classes.txt"
    classes.write_text("\n".join(JPEG_CLASSES) + "\n")
    before = snapshot(w)
    refused(capsys, _build("webdataset", w / "tars", classes, "--option", f"classes={classes}",
                           "--overwrite"), "is the input", str(classes))
    assert snapshot(w) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_data_build_over_a_folder_that_is_no_dataset_is_refused(w, capsys, overwrite):
    mine = w / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    before = snapshot(w)
    err = refused(capsys, _build("imagefolder", w / "images", mine, *overwrite), str(mine),
                  "not an ltscale dataset", "Choose another --out")
    assert "pass --overwrite" not in err
    assert snapshot(w) == before


@pytest.mark.parametrize("content", ["{}", '{"written_by": "someone else"}', "not json"])
def test_data_build_over_a_folder_whose_card_has_no_marker_is_refused(w, capsys, content):
    other = w / "other"
    other.mkdir()
    (other / "card.json").write_text(content)
    (other / "index.npz").write_bytes(b"x")
    before = snapshot(w)
    refused(capsys, _build("imagefolder", w / "images", other, "--overwrite"), str(other),
            "card.json")
    assert snapshot(w) == before


def test_data_build_over_an_ltscale_dataset_holding_a_user_file_is_refused(w, capsys):
    (w / "shards" / "notes.md").write_text("my notes\n")
    before = snapshot(w)
    refused(capsys, _build("imagefolder", w / "images", w / "shards", "--overwrite"),
            "notes.md", "did not write")
    assert snapshot(w) == before


def test_data_build_over_a_file_is_refused(w, capsys):
    f = w / "data.bin"
    f.write_bytes(b"\0" * 10)
    before = snapshot(w)
    refused(capsys, _build("imagefolder", w / "images", f, "--overwrite"), str(f),
            "is not a folder")
    assert snapshot(w) == before


def test_a_foreign_building_folder_is_not_removed(w, capsys):
    work = w / ".new.building"
    work.mkdir()
    (work / "keep.txt").write_text("keep\n")
    before = snapshot(w)
    refused(capsys, _build("imagefolder", w / "images", w / "new"), str(work), "build-plan.json")
    assert snapshot(w) == before


def test_only_an_ltscale_dataset_is_replaced_and_its_card_carries_the_marker(w, capsys):
    card = json.loads((w / "shards" / "card.json").read_text())
    assert card["written_by"] == OWNER_MARKER
    assert set(card["files"]) == {p.name for p in (w / "shards").iterdir()}
    refused(capsys, _build("imagefolder", w / "images", w / "shards"), "pass --overwrite")
    before = snapshot(w / "images")
    assert cli(_build("imagefolder", w / "images", w / "shards", "--overwrite",
                      "--shard-size", "100000")) == 0
    assert snapshot(w / "images") == before
    assert not list(w.glob(".shards.*"))  # the replaced copy is gone, nothing else left


def test_webdataset_index_in_place_never_touches_the_tars(w, capsys):
    before = snapshot(w / "tars")
    assert cli(_build("webdataset", w / "tars", w / "wds")) == 0
    assert cli(_build("webdataset", w / "tars", w / "wds", "--overwrite")) == 0
    assert snapshot(w / "tars") == before
    assert sorted(p.name for p in (w / "wds").iterdir()) == ["card.json", "index.npz"]


def test_a_recipe_whose_shards_folder_is_a_user_folder_is_refused(w, capsys):
    """ensure_shards used to rebuild (replace) any data.shards folder without an index."""
    mine = w / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"\xff\xd8 precious")
    recipe = w / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "safety", "output_dir": str(w / "run"),
        "data": {"source": {"kind": "imagefolder", "path": str(w / "images")},
                 "shards": str(mine), "image_size": 16, "channels": 3,
                 "mean": [0.5] * 3, "std": [0.25] * 3},
        "pretrain": {"backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 4}}))
    inputs = (w / "images", mine, recipe, w / "shards")
    before = snapshot(*inputs)
    refused(capsys, ["pretrain", recipe, "--no-track"], str(mine), "not an ltscale dataset")
    assert snapshot(*inputs) == before


# --- manifest make: --out against the dataset ----------------------------------------------------
@pytest.mark.parametrize("target,needle", [
    ("shards/index.npz", "is the input"),
    ("shards/card.json", "is the input"),
    ("shards/train-000000.tar", "is the input"),
    ("shards", "contains the input"),
    ("shards/new.npz", "lies inside"),
    (".", "contains the input"),
    ("tars/train-0.tar", "is the input"),      # a webdataset shard indexed in place
    ("tars/extra.npz", "lies inside"),
    ("tars/README.txt", "lies inside"),
    ("notes.txt", "not an ltscale manifest"),
])
def test_manifest_make_out_over_dataset_files_is_refused(w, capsys, target, needle):
    assert cli(_build("webdataset", w / "tars", w / "wds")) == 0
    (w / "notes.txt").write_text("keep me\n")
    ds = w / ("wds" if target.startswith("tars") else "shards")
    before = snapshot(w)
    refused(capsys, ["manifest", "make", ds, "--out", w / target], needle)
    assert snapshot(w) == before


def test_manifest_make_out_over_a_folder_is_refused(w, capsys):
    (w / "out").mkdir()
    before = snapshot(w)
    refused(capsys, ["manifest", "make", w / "shards", "--out", w / "out"], "is a folder")
    assert snapshot(w) == before


def test_manifest_make_replaces_its_own_manifest(w, capsys):
    out = w / "m.npz"
    assert cli(["manifest", "make", str(w / "shards"), "--out", str(out)]) == 0
    assert cli(["manifest", "make", str(w / "shards"), "--noise", "sym:0.5", "--out",
                str(out)]) == 0


# --- damaged files -------------------------------------------------------------------------------
def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-middle", "flip-start", "cut", "empty"])
def test_a_damaged_manifest_is_one_line(w, capsys, damage):
    m = w / "train.manifest.npz"
    if damage == "cut":
        m.write_bytes(m.read_bytes()[:200])
    elif damage == "empty":
        m.write_bytes(b"")
    else:
        _flip(m, 0.5 if damage == "flip-middle" else 0.0)
    before = snapshot(w)
    refused(capsys, ["manifest", "stats", m], str(m))
    assert snapshot(w) == before


@pytest.mark.parametrize("damage", ["flip-start", "cut"])
def test_a_damaged_index_is_one_line(w, capsys, damage):
    idx = w / "shards" / "index.npz"
    if damage == "cut":
        idx.write_bytes(idx.read_bytes()[:100])
    else:
        _flip(idx, 0.0)
    before = snapshot(w)
    refused(capsys, ["manifest", "make", w / "shards", "--out", w / "m.npz"], str(idx))
    assert snapshot(w) == before
