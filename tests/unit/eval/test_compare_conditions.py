"""`ltscale compare` rows are conditions: runs are pooled (mean ± std) only over replicates (the
seeds), never over datasets or settings; default metrics no run has are left out, not blamed on
a --metric nobody gave."""

import mlflow
import pytest

from ltscale.cli import main
from ltscale.eval import compare as c

METRICS = ("test/many", "test/medium", "test/few", "test/top1")
BASE = {"finetune.loss.name": "la_sl", "manifest.noise": "sym:0.4", "pretrain.epochs": 4,
        "manifest.imbalance": "exp:10", "device": "cpu"}


def _run(client, exp, params, metrics, index_hash="aaaa"):
    rid = client.create_run(exp, tags={"ltscale.stage": "eval", "ltscale.model": "simsiam + la_sl",
                                       "ltscale.index_hash": index_hash}).info.run_id
    for k, v in params.items():
        client.log_param(rid, k, v)
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    client.set_terminated(rid, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('cond') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    # one recipe on two datasets: a 3-class one (top-1 0.90, 0.92) and a 10-class one (0.50, 0.52)
    exp = client.create_experiment("datasets")
    for index_hash, acc in (("aaaa", 0.90), ("bbbb", 0.50)):
        for seed in (0, 1):
            _run(client, exp, BASE | {"seed": seed, "output_dir": f"runs/{index_hash}/seed{seed}"},
                 {m: acc + 0.02 * seed for m in METRICS}, index_hash)
    # replicates that differ only in seeds and where they ran, and one run of another setting
    exp = client.create_experiment("settings")
    for i, (epochs, acc) in enumerate(((4, 0.60), (4, 0.62), (8, 0.70))):
        _run(client, exp, BASE | {"seed": i, "manifest.seed": i, "pretrain.epochs": epochs,
                                  "output_dir": f"runs/p{i}", "name": f"point{i}",
                                  "pretrain.workers": i, "device": ("cpu", "cuda", "cpu")[i]},
             {m: acc for m in METRICS})
    # a long tail too short for many-shot classes: eval logs no test/many
    exp = client.create_experiment("fewshot")
    for seed in (0, 1):
        _run(client, exp, BASE | {"seed": seed},
             {"test/medium": 0.5, "test/few": 0.3, "test/top1": 0.4 + 0.02 * seed})
    # runs with none of the default metrics
    exp = client.create_experiment("knn")
    _run(client, exp, BASE | {"seed": 0}, {"knn/top1": 0.7})
    return uri


def _compare(store, capsys, *args):
    rc = main(["compare", *args, "--tracking-uri", store])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_runs_of_different_datasets_are_separate_rows(store, capsys, ltscale_log):
    rc, out, _ = _compare(store, capsys, "datasets", "--group-by", "finetune.loss.name",
                          "--metric", "top1")
    assert rc == 0
    assert out.strip().splitlines() == [
        "| finetune.loss.name | ltscale.index_hash | runs | top1 |", "|---|---|---|---|",
        "| la_sl | aaaa | 2 | 91.00 ± 1.41 |", "| la_sl | bbbb | 2 | 51.00 ± 1.41 |"]
    assert any("rows also split by ltscale.index_hash (aaaa, bbbb)" in line
               for line in ltscale_log)
    rc, out, _ = _compare(store, capsys, "datasets", "--metric", "top1")  # no --group-by
    assert rc == 0 and out.strip().splitlines()[2:] == ["| aaaa | 2 | 91.00 ± 1.41 |",
                                                        "| bbbb | 2 | 51.00 ± 1.41 |"]


def test_a_paper_layout_whose_cells_mix_conditions_is_refused_naming_the_keys(store, capsys):
    rc, out, err = _compare(store, capsys, "datasets", "--rows", "finetune.loss.name",
                            "--cols", "manifest.noise", "--metric", "top1")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--rows/--cols: the runs of one cell are not one condition" in err
    assert "ltscale.index_hash (aaaa, bbbb)" in err


def test_seeds_and_where_a_run_ran_are_pooled_but_settings_are_not(store, capsys):
    rc, out, _ = _compare(store, capsys, "settings", "--group-by", "finetune.loss.name",
                          "--metric", "top1")
    assert rc == 0
    assert out.strip().splitlines() == [
        "| finetune.loss.name | pretrain.epochs | runs | top1 |", "|---|---|---|---|",
        "| la_sl | 4 | 2 | 61.00 ± 1.41 |", "| la_sl | 8 | 1 | 70.00 |"]


def test_group_runs_refuses_a_group_of_different_conditions(store):
    runs = c.load_runs("datasets", store)
    assert {r["params"]["ltscale.index_hash"] for r in runs} == {"aaaa", "bbbb"}
    with pytest.raises(c.CompareError, match=r"row all runs are not one condition: they differ "
                                             r"in ltscale.index_hash \(aaaa, bbbb\)"):
        c.group_runs(runs, [], ["test/top1"])
    groups = c.group_runs(runs, ["ltscale.index_hash"], ["test/top1"])
    assert [len(g.runs) for g in groups] == [2, 2]


def test_default_metrics_no_run_has_are_left_out_with_a_note(store, capsys, ltscale_log):
    rc, out, err = _compare(store, capsys, "fewshot")
    assert rc == 0, err
    assert out.splitlines()[0] == "| runs | medium | few | top1 |"
    assert out.splitlines()[2] == "| 2 | 50.00 ± 0.00 | 30.00 ± 0.00 | 41.00 ± 1.41 |"
    assert "no run has many: left out of the table" in ltscale_log
    # a metric the user names is still refused
    rc, _, err = _compare(store, capsys, "fewshot", "--metric", "many")
    assert rc == 2 and "--metric many: no run has it; metrics: test/few" in err


def test_no_default_metric_at_all_is_refused_without_blaming_a_metric(store, capsys):
    rc, _, err = _compare(store, capsys, "knn")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no run has the default metrics (many, medium, few, top1)" in err
    assert "metrics: knn/top1" in err and "--metric many:" not in err


def test_a_refusal_is_one_line_even_when_notes_are_pending(store, capsys, tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("mine\n")
    rc, out, err = _compare(store, capsys, "fewshot", "--out", str(mine))  # "many" left out
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert f"--out {mine} exists and is a file ltscale did not write" in err
    assert mine.read_text() == "mine\n"
