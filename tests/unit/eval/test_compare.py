"""`ltscale compare` against eval runs made here with known metrics: groups, mean ± std over
seeds, CSV, a paper-style layout, plots, and the errors for unknown experiments, keys, metrics."""

import csv
import io

import mlflow
import pytest

from ltscale.cli import main

METHODS = {"ce": 0.50, "la_sl": 0.70}     # base accuracy per loss
NOISE = {"sym:0.2": 0.10, "sym:0.4": 0.0}  # added per noise rate
SEEDS = (0, 1, 2)


def _value(loss, noise, seed, metric):
    # seeds add 0, 1, 2 points: mean = base + 1 point, sample std = exactly 1 point
    offset = {"test/many": 0.0, "test/medium": -0.1, "test/few": -0.2, "test/top1": -0.05}[metric]
    return METHODS[loss] + NOISE[noise] + offset + 0.01 * seed


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('cmp') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("cmp")
    for loss in METHODS:
        for noise in NOISE:
            for seed in SEEDS:
                run = client.create_run(exp, tags={"ltscale.stage": "eval",
                                                   "ltscale.model": f"simsiam + {loss}"})
                rid = run.info.run_id
                for k, v in {"finetune.loss.name": loss, "manifest.noise": noise,
                             "seed": seed, "pretrain.epochs": 4}.items():
                    client.log_param(rid, k, v)
                for m in ("test/many", "test/medium", "test/few", "test/top1"):
                    client.log_metric(rid, m, _value(loss, noise, seed, m))
                client.set_terminated(rid, "FINISHED")
    # the CE-from-scratch baseline: another stage, the same model tag for all its seeds
    for noise in NOISE:
        for seed in SEEDS:
            rid = client.create_run(exp, tags={"ltscale.stage": "baseline_ce_scratch",
                                               "ltscale.model": "scratch + ce"}).info.run_id
            for k, v in {"finetune.loss.name": "la_sl", "manifest.noise": noise,
                         "seed": seed}.items():
                client.log_param(rid, k, v)
            client.log_metric(rid, "test/top1", 0.30 + NOISE[noise] + 0.01 * seed)
            client.set_terminated(rid, "FINISHED")
    # runs that must not count: a failed eval run and another stage's run
    bad = client.create_run(exp, tags={"ltscale.stage": "eval"}).info.run_id
    client.log_param(bad, "finetune.loss.name", "ce")
    client.log_param(bad, "manifest.noise", "sym:0.2")
    client.log_metric(bad, "test/many", 0.0)
    client.set_terminated(bad, "FAILED")
    other = client.create_run(exp, tags={"ltscale.stage": "pretrain"}).info.run_id
    client.log_param(other, "finetune.loss.name", "ce")
    client.log_metric(other, "test/many", 0.0)
    client.set_terminated(other, "FINISHED")
    return uri


def _compare(store, capsys, *args):
    rc = main(["compare", "cmp", "--tracking-uri", store, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_markdown_groups_by_keys_with_mean_and_std_over_seeds(store, capsys):
    rc, out, _ = _compare(store, capsys, "--group-by", "finetune.loss.name", "manifest.noise")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == "| finetune.loss.name | manifest.noise | runs | many | medium | few | top1 |"
    assert "| ce | sym:0.2 | 3 | 61.00 ± 1.00 | 51.00 ± 1.00 | 41.00 ± 1.00 | 56.00 ± 1.00 |" \
        in lines
    assert "| la_sl | sym:0.4 | 3 | 71.00 ± 1.00 | 61.00 ± 1.00 | 51.00 ± 1.00 | 66.00 ± 1.00 |" \
        in lines
    assert len(lines) == 2 + 4  # header, rule, four groups (failed and pretrain runs left out)


def test_csv_gives_raw_means_and_stds(store, capsys):
    rc, out, _ = _compare(store, capsys, "--group-by", "finetune.loss.name", "manifest.noise",
                          "--metric", "many", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [r["finetune.loss.name"] for r in rows] == ["ce", "ce", "la_sl", "la_sl"]
    ce = rows[0]
    assert ce["runs"] == "3" and ce["manifest.noise"] == "sym:0.2"  # three seeds
    values = [_value("ce", "sym:0.2", s, "test/many") for s in SEEDS]
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert float(ce["many_mean"]) == pytest.approx(mean, abs=1e-12)
    assert float(ce["many_std"]) == pytest.approx(std, abs=1e-12)


def test_paper_layout_puts_keys_on_rows_and_columns(store, capsys):
    rc, out, _ = _compare(store, capsys, "--rows", "finetune.loss.name", "--cols",
                          "manifest.noise", "--metric", "many", "few")
    lines = out.strip().splitlines()
    assert rc == 0
    assert lines[0] == ("| finetune.loss.name | sym:0.2 many | sym:0.2 few | sym:0.4 many | "
                        "sym:0.4 few |")
    assert lines[2] == "| ce | 61.00 ± 1.00 | 41.00 ± 1.00 | 51.00 ± 1.00 | 31.00 ± 1.00 |"
    assert lines[3] == "| la_sl | 81.00 ± 1.00 | 61.00 ± 1.00 | 71.00 ± 1.00 | 51.00 ± 1.00 |"


def test_plots_are_written_as_png(store, capsys, tmp_path):
    rc, out, _ = _compare(store, capsys, "--group-by", "finetune.loss.name", "--x",
                          "manifest.noise", "--metric", "many", "--plots", str(tmp_path),
                          "--out", str(tmp_path / "table.md"))
    assert rc == 0
    bars = tmp_path / "compare_bars.png"
    curve = tmp_path / "compare_test_many_vs_manifest_noise.png"
    for png in (bars, curve):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out
    assert (tmp_path / "table.md").read_text() in out


def test_stage_all_groups_every_evaluated_model_by_its_name(store, capsys):
    # the baseline's runs log finetune.loss.name la_sl too: only `model` tells them apart
    rc, out, _ = _compare(store, capsys, "--stage", "all", "--rows", "model", "--cols",
                          "manifest.noise", "--metric", "top1")
    lines = out.strip().splitlines()
    assert rc == 0
    assert lines[0] == "| model | sym:0.2 top1 | sym:0.4 top1 |"
    assert lines[2:] == ["| scratch + ce | 41.00 ± 1.00 | 31.00 ± 1.00 |",
                         "| simsiam + ce | 56.00 ± 1.00 | 46.00 ± 1.00 |",
                         "| simsiam + la_sl | 76.00 ± 1.00 | 66.00 ± 1.00 |"]
    # the default stays the eval runs alone (rows split by noise rate: one condition each)
    rc, out, _ = _compare(store, capsys, "--group-by", "model", "--metric", "top1")
    assert rc == 0 and "scratch + ce" not in out and "simsiam + ce | sym:0.2 | 3 |" in out


def test_where_keeps_the_matching_runs_only(store, capsys):
    rc, out, _ = _compare(store, capsys, "--where", "manifest.noise=sym:0.4", "seed=1.0",
                          "--group-by", "finetune.loss.name", "--metric", "many")
    assert rc == 0
    assert out.strip().splitlines()[2:] == ["| ce | 1 | 51.00 |", "| la_sl | 1 | 71.00 |"]
    rc, _, err = _compare(store, capsys, "--where", "manifest.noise=sym:0.9")
    assert rc == 2 and "manifest.noise takes sym:0.2, sym:0.4" in err
    rc, _, err = _compare(store, capsys, "--where", "manifest.nois=sym:0.2")
    assert rc == 2 and "--where manifest.nois: no run has this recipe key" in err
    rc, _, err = _compare(store, capsys, "--where", "manifest.noise")
    assert rc == 2 and "write KEY=VALUE" in err


def test_bad_input_names_what_exists(store, capsys):
    rc, _, err = _compare(store, capsys, "--group-by", "manifest.nois")
    assert rc == 2 and "manifest.nois" in err and "did you mean manifest.noise" in err
    rc, _, err = _compare(store, capsys, "--metric", "rare")
    assert rc == 2 and "--metric rare: no run has it" in err and "test/few" in err
    rc = main(["compare", "nope", "--tracking-uri", store])
    assert rc == 2 and "no MLflow experiment 'nope'" in capsys.readouterr().err
    rc, _, err = _compare(store, capsys, "--group-by", "finetune.loss.name", "manifest.noise",
                          "--rows", "finetune.loss.name")
    assert rc == 2 and "do not separate the groups" in err


def test_ece_column_by_default_when_runs_have_it(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("calib")
    for loss, ece in (("ce", 0.20), ("ce", 0.10), ("la_sl", 0.05)):
        rid = client.create_run(exp, tags={"ltscale.stage": "eval"}).info.run_id
        client.log_param(rid, "finetune.loss.name", loss)
        for m, v in {"test/many": 0.6, "test/medium": 0.5, "test/few": 0.4, "test/top1": 0.5,
                     "test/ece": ece, "test/ece_few": 2 * ece}.items():
            client.log_metric(rid, m, v)
        client.set_terminated(rid, "FINISHED")
    rc = main(["compare", "calib", "--tracking-uri", uri, "--group-by", "finetune.loss.name"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert lines[0] == "| finetune.loss.name | runs | many | medium | few | top1 | ece |"
    assert lines[2].endswith("| 15.00 ± 7.07 |") and lines[3].endswith("| 5.00 |")
    rc = main(["compare", "calib", "--tracking-uri", uri, "--group-by", "finetune.loss.name",
               "--metric", "ece", "ece_few", "--format", "csv"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0] == "finetune.loss.name,runs,ece_mean,ece_std,ece_few_mean,ece_few_std"


def test_no_ece_column_for_runs_without_it(store, capsys):
    rc, out, _ = _compare(store, capsys, "--group-by", "finetune.loss.name")
    assert rc == 0 and "ece" not in out.splitlines()[0]


def test_fractions_show_as_percent_and_other_metrics_as_logged():
    from ltscale.eval.aggregate import format_metric, is_fraction

    for name in ("test/top1", "test/rare", "test/ece_few", "knn/top1", "noise/auroc"):
        assert is_fraction(name), name
    for name in ("pretrain/seconds", "epoch/loss", "train/lr", "epoch/peak_memory_mb",
                 "test/epoch/seconds", "data/skipped"):
        assert not is_fraction(name), name
    assert format_metric("test/top1", 0.5512, 0.0084) == "55.12 ± 0.84"
    assert format_metric("pretrain/seconds", 153.6, 12.5) == "153.60 ± 12.50"
    assert format_metric("pretrain/seconds", 153.6, None) == "153.60"
    assert format_metric("pretrain/seconds", None, None) == "n/a"


def test_budget_columns_appear_beside_accuracy_when_runs_have_them(tmp_path, capsys):
    """Runs that logged budget/* (every evaluated model since budgets exist) show images seen,
    steps and seconds by default, as counts and seconds, not percent."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("budget")
    for seed in (0, 1):
        rid = client.create_run(exp, tags={"ltscale.stage": "eval",
                                           "ltscale.model": "simsiam + la_sl"}).info.run_id
        client.log_param(rid, "seed", seed)
        for m, v in {"test/many": 0.7, "test/medium": 0.6, "test/few": 0.5, "test/top1": 0.65,
                     "budget/images": 208404, "budget/steps": 812,
                     "budget/seconds": 160.0 + seed}.items():
            client.log_metric(rid, m, v)
        client.set_terminated(rid, "FINISHED")
    assert main(["compare", "budget", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("|"))
    assert "budget/images" in header and "budget/steps" in header and "budget/seconds" in header
    assert "| 208404 |" in out.replace(" ± 0 |", " |") and "160.50 ± 0.71" in out
