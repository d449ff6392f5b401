"""Result integrity: no ltscale writer replaces a file it did not write (``compare --out`` /
``--plots``, ``export --out``), the output lock never follows a link or empties a file of yours,
read-only commands never create a tracking store, and atomic writes keep the umask's mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import mlflow
import pytest
import torch

from ltscale.cli import main
from ltscale.core.atomic import write_json_atomic
from ltscale.core.lock import LOCK_FILE, output_lock
from ltscale.core.owned import MARK_FILE
from tests.reliability.safety import refused, snapshot

pytestmark = pytest.mark.reliability

PNG = b"\x89PNG\r\n\x1a\n"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Three finished eval runs of one condition (seeds 0-2)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('integrity') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("exp")
    for seed in range(3):
        rid = client.create_run(exp, tags={"ltscale.stage": "eval"}).info.run_id
        client.log_param(rid, "finetune.loss.name", "ce")
        client.log_param(rid, "seed", seed)
        client.log_metric(rid, "test/top1", 0.5 + 0.01 * seed)
        client.set_terminated(rid, "FINISHED")
    return uri


def _compare(store, *args) -> list[str]:
    return ["compare", "exp", "--tracking-uri", store, "--metric", "top1", *map(str, args)]


def _db(store: str) -> Path:
    return Path(store[len("sqlite:///"):])


def cli_ok(capsys, argv) -> bool:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    return True


# --- compare --out / --plots: only files ltscale wrote are replaced ----------------------------
def test_compare_out_over_the_tracking_store_is_refused_even_with_force(store, capsys):
    db = _db(store)
    before = snapshot(db)
    for force in ([], ["--force"]):
        refused(capsys, _compare(store, "--out", db, *force), f"--out {db}",
                "is the tracking store this command reads")
    assert snapshot(db) == before


def test_compare_out_over_a_users_file_is_refused_unless_forced(store, capsys, tmp_path):
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text("name: mine\n")
    refused(capsys, _compare(store, "--out", recipe), f"--out {recipe}",
            "is a file ltscale did not write", MARK_FILE, "--force")
    assert recipe.read_text() == "name: mine\n"
    assert not (tmp_path / MARK_FILE).exists()
    assert cli_ok(capsys, _compare(store, "--out", recipe, "--force"))
    assert "| 3 | 51.00 ± 1.00 |" in recipe.read_text()


def test_compare_replaces_its_own_table_but_not_one_edited_since(store, capsys, tmp_path):
    table = tmp_path / "table.md"
    assert cli_ok(capsys, _compare(store, "--out", table))
    assert cli_ok(capsys, _compare(store, "--out", table, "--format", "csv"))  # ours: replaced
    assert table.read_text().startswith("runs,top1_mean,top1_std")
    assert stat.S_IMODE(table.stat().st_mode) == 0o666 & ~_umask()
    table.write_text("my notes\n")
    refused(capsys, _compare(store, "--out", table), f"--out {table}", "did not write")
    assert table.read_text() == "my notes\n"


def test_compare_plots_never_replace_a_users_png(store, capsys, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    mine = plots / "compare_bars.png"
    mine.write_bytes(PNG + b"my figure")
    table = tmp_path / "table.md"
    refused(capsys, _compare(store, "--plots", plots, "--out", table),
            f"--plots {mine}", "is a file ltscale did not write")
    assert mine.read_bytes() == PNG + b"my figure"
    assert not table.exists()  # checked before anything is written
    assert sorted(p.name for p in plots.iterdir()) == ["compare_bars.png"]
    assert cli_ok(capsys, _compare(store, "--plots", plots, "--force"))
    assert mine.read_bytes().startswith(PNG) and b"my figure" not in mine.read_bytes()
    assert cli_ok(capsys, _compare(store, "--plots", plots))  # now ltscale's: replaced


def test_compare_out_refuses_a_folder_a_link_and_a_foreign_list(store, capsys, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    refused(capsys, _compare(store, "--out", folder, "--force"), f"--out {folder} is a folder")
    target = tmp_path / "target.txt"
    target.write_text("mine\n")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    refused(capsys, _compare(store, "--out", link), f"--out {link}", "is a symbolic link")
    assert target.read_text() == "mine\n" and link.is_symlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / MARK_FILE).write_text('{"files": {"t.md": []}}')
    refused(capsys, _compare(store, "--out", other / "t.md", "--force"),
            f"{other / MARK_FILE} is not ltscale's list of the files it wrote")
    assert not (other / "t.md").exists()


def test_export_out_over_a_users_file_is_refused_before_any_file(tmp_path, capsys):
    from ltscale.models import create_backbone

    enc = create_backbone("resnet18", in_chans=3, cifar_stem=False)
    source = tmp_path / "encoder.pt"
    torch.save({"backbone": "resnet18", "cifar_stem": False, "in_chans": 3,
                "feat_dim": enc.feat_dim, "state_dict": enc.state_dict()}, source)
    out = tmp_path / "models"
    out.mkdir()
    (out / "export.json").write_text("my notes\n")
    refused(capsys, ["export", source, "--out", out, "--format", "torchvision"],
            f"--out {out / 'export.json'}", "is a file ltscale did not write")
    assert sorted(p.name for p in out.iterdir()) == ["export.json"]
    assert (out / "export.json").read_text() == "my notes\n"


# --- the output lock ---------------------------------------------------------------------------
def _lock_refused(folder, *needles):
    from ltscale.core.lock import LockRefused

    with pytest.raises(LockRefused) as info:
        with output_lock(folder):
            pytest.fail("the lock was taken")
    for needle in needles:
        assert needle in str(info.value)


def test_the_lock_never_follows_a_link_or_empties_a_file(tmp_path):
    mine = tmp_path / "thesis.tex"
    mine.write_text("years of work\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).symlink_to(mine)
    _lock_refused(out, str(out / LOCK_FILE), "is a symbolic link")
    dangling = tmp_path / "out2"
    dangling.mkdir()
    (dangling / LOCK_FILE).symlink_to(tmp_path / "created_through_the_link")
    _lock_refused(dangling, "is a symbolic link")
    assert not (tmp_path / "created_through_the_link").exists()
    hard = tmp_path / "out3"
    hard.mkdir()
    os.link(mine, hard / LOCK_FILE)
    _lock_refused(hard, "has other hard links")
    fifo = tmp_path / "out4"
    fifo.mkdir()
    os.mkfifo(fifo / LOCK_FILE)
    _lock_refused(fifo, "is not a regular file")
    foreign = tmp_path / "out5"
    foreign.mkdir()
    (foreign / LOCK_FILE).write_text("not a lock\n")
    _lock_refused(foreign, "holds something other than an ltscale lock")
    assert (foreign / LOCK_FILE).read_text() == "not a lock\n"
    assert mine.read_text() == "years of work\n"


def test_the_lock_is_created_without_truncating_and_reused(tmp_path):
    with output_lock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    (tmp_path / "out" / LOCK_FILE).write_text("pid 1 on elsewhere")  # a killed holder's line
    with output_lock(tmp_path / "out"):
        pass
    assert (tmp_path / "out" / LOCK_FILE).read_text() == ""


# --- read-only commands create no store --------------------------------------------------------
def test_compare_without_a_store_creates_none(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    refused(capsys, ["compare", "exp"], f"{tmp_path / 'mlflow.db'} does not exist",
            "nothing was created")
    typo = tmp_path / "mlfow.db"
    refused(capsys, ["compare", "exp", "--tracking-uri", f"sqlite:///{typo}"],
            f"sqlite:///{typo}", f"{typo} does not exist")
    refused(capsys, ["compare", "exp", "--tracking-uri", "sqlite:///rel/mlflow.db"],
            "rel/mlflow.db does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_finetune_from_an_unknown_ref_with_no_track_creates_no_store(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    refused(capsys, ["finetune", RECIPE, "--from", "3f2a9c", "--no-track",
                     f"output_dir={tmp_path / 'out'}"],
            "--from 3f2a9c", f"{tmp_path / 'mlflow.db'}", "nothing was created")
    assert sorted(p.name for p in tmp_path.iterdir()) == []



# --- modes of atomically written files ---------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_index_card_and_manifest_follow_the_umask_like_the_shards(tiny_idx, tmp_path, umask022):
    from ltscale.data.index import ShardIndex
    from ltscale.data.manifest import build_manifest
    from ltscale.data.manifest_spec import ImbalanceSpec, ManifestSpec
    from ltscale.data.shards import build_shards
    from ltscale.data.sources import open_source

    out = tmp_path / "ds"
    build_shards(open_source("idx", tiny_idx), out, source_kind="idx",
                 source_path=str(tiny_idx), progress=False, shard_bytes=20_000)
    manifest = tmp_path / "m.npz"
    build_manifest(ShardIndex.load(out), ManifestSpec(imbalance=ImbalanceSpec("natural"))
                   ).save(manifest)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*out.iterdir(), manifest]}
    assert set(modes) >= {"index.npz", "card.json", "m.npz"} and any(
        n.endswith(".tar") for n in modes)
    assert set(modes.values()) == {0o644}, modes
    os.umask(0o077)
    write_json_atomic(tmp_path / "private.json", {})
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
