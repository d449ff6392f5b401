"""Existing ``data.shards`` are reused only when their card says they were built from the recipe's
``data.source``.

Issue #29: shards built from another source trained while the recipe and the logged params named
``data.source.path``; now that is one line naming both sources (exit 2), before any work.
"""

import json
import os

import pytest
import yaml

from ltscale.cli import main as cli
from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import DataError
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from ltscale.stages.context import ensure_shards, shards_source
from tests.conftest import tiny_pipeline_recipe, write_idx


@pytest.fixture
def built(tiny_idx, tmp_path):
    """(shards folder, the idx folder it was built from)."""
    shards = tmp_path / "shards"
    build_shards(open_source("idx", tiny_idx), shards, source_kind="idx",
                 source_path=str(tiny_idx), progress=False)
    return shards, tiny_idx


def recipe(tmp_path, shards, path, kind="idx"):
    raw = tiny_pipeline_recipe(path, tmp_path / "run", shards)
    raw["data"]["source"] = {"kind": kind, "path": str(path)}
    return recipe_from_dict(raw)


def other_idx(tmp_path):
    import numpy as np

    root = tmp_path / "other-idx"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((3, 8, 8)))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(3))
    return root


def test_shards_of_another_source_are_refused_naming_both(built, tmp_path):
    shards, idx = built
    other = other_idx(tmp_path)
    with pytest.raises(DataError) as exc:
        ensure_shards(recipe(tmp_path, shards, other), progress=False)
    msg = str(exc.value)
    assert f"data.shards {shards} was built from idx {idx}, not from the recipe's data.source " \
           f"idx {other}" in msg and "\n" not in msg
    missing = tmp_path / "not-there"  # a source that no longer exists: refused alike
    with pytest.raises(DataError, match=f"data.source idx {missing}"):
        ensure_shards(recipe(tmp_path, shards, missing), progress=False)
    with pytest.raises(DataError, match=r"built from idx .*not from the recipe's data.source "
                                        r"imagefolder"):
        ensure_shards(recipe(tmp_path, shards, idx, kind="imagefolder"), progress=False)


def test_the_same_source_spelt_otherwise_is_reused(built, tmp_path, monkeypatch):
    shards, idx = built
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert len(ensure_shards(recipe(tmp_path, shards, idx), progress=False)) > 0
    (tmp_path / "alias").symlink_to(idx)
    monkeypatch.chdir(idx.parent)
    for path in (tmp_path / "alias", idx.name, f"{idx}/"):
        ensure_shards(recipe(tmp_path, shards, path), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before  # nothing rebuilt


def test_a_card_without_a_source_is_used_with_a_warning(built, tmp_path, ltscale_log):
    shards, idx = built
    card = json.loads((shards / "card.json").read_text())
    del card["source"]
    (shards / "card.json").write_text(json.dumps(card))
    assert shards_source(shards) is None
    other = other_idx(tmp_path)
    assert len(ensure_shards(recipe(tmp_path, shards, other), progress=False)) > 0
    warned = [line for line in ltscale_log if "records no source" in line]
    assert len(warned) == 1 and str(shards) in warned[0] and f"idx {other}" in warned[0]


def test_pretrain_on_shards_of_another_source_stops_with_one_line(built, tmp_path, capsys):
    shards, idx = built
    other = other_idx(tmp_path)
    raw = tiny_pipeline_recipe(other, tmp_path / "run", shards)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert cli(["pretrain", str(path), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ltscale: error: data.shards ")
    assert f"built from idx {idx}" in err and f"data.source idx {other}" in err
    assert not list((tmp_path / "run").rglob("*.pt"))
    assert sorted(os.listdir(shards)) == sorted(json.loads(
        (shards / "card.json").read_text())["files"])
