"""`ltscale submit` on a real one-node SLURM cluster (tools/slurm-local.sh): a 2-task CPU job
trains with gloo, its job id and logs recorded. (A job signalled and requeued on the same
cluster: tests/reliability/test_preemption.py.)"""

import pytest

from tests.conftest import make_idx
from tests.slurm.cluster import (
    final_state,
    job_records,
    ltscale,
    mlflow_runs,
    needs_slurm,
    write_recipe,
)

pytestmark = needs_slurm

EPOCHS = 3           # 120 images, 2 ranks × batch 8: 7 steps per epoch, 21 in all
TOTAL_STEPS = 21


def _submit(tmp, recipe, folder, *extra):
    return ltscale("submit", str(recipe), "--command", "pretrain", "--tasks-per-node", "2",
                   "--partition", "debug", "--time", "10", "--folder", str(folder), *extra,
                   cwd=tmp)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """One 2-task job through sbatch, waited for."""
    tmp = tmp_path_factory.mktemp("slurm")
    idx = make_idx(tmp / "idx", train=120, test=30)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    recipe = write_recipe(tmp / "r.yaml", idx, tmp / "ref", epochs=EPOCHS, uri=uri,
                          experiment="reference")
    proc = _submit(tmp, recipe, tmp / "sub", "--wait")
    return {"tmp": tmp, "idx": idx, "uri": uri, "proc": proc}


def test_two_task_job_trains_with_gloo_and_records_its_job(cluster_run):
    proc, tmp = cluster_run["proc"], cluster_run["tmp"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (rec,) = job_records(tmp / "sub")
    assert f"submitted job {rec['job_id']}" in proc.stdout
    assert rec["tasks_per_node"] == 2 and rec["cluster"] == "slurm"
    assert (tmp / "sub" / rec["job_id"] / f"{rec['job_id']}_1_log.out").exists()  # rank 1 ran
    saved = final_state(tmp / "ref" / "pretrain")
    assert saved["world_size"] == 2 and saved["step"] == TOTAL_STEPS
    assert (tmp / "ref" / "pretrain" / "encoder.pt").exists()
    runs = mlflow_runs(cluster_run["uri"], "reference")
    assert [r.data.tags["ltscale.stage"] for r in runs] == ["pretrain"]  # rank 0 alone tracks
    assert runs[0].info.status == "FINISHED"


def test_a_sweep_goes_out_as_one_job_array(cluster_run):
    tmp = cluster_run["tmp"]
    recipe = write_recipe(tmp / "sweep.yaml", cluster_run["idx"], tmp / "sweep", epochs=1,
                          uri=cluster_run["uri"], experiment="sweep")
    proc = ltscale("submit", str(recipe), "--command", "pretrain", "--partition", "debug",
                   "--time", "10", "--folder", str(tmp / "sub-sweep"), "--sweep", "seed=3,4",
                   "--wait", cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = job_records(tmp / "sub-sweep")
    array = {r["job_id"].split("_")[0] for r in records}
    assert len(array) == 1 and sorted(r["job_id"].split("_")[1] for r in records) == ["0", "1"]
    assert [r["label"] for r in records] == ["seed=3", "seed=4"]
    for seed in (3, 4):
        assert (tmp / "sweep" / f"seed={seed}" / "pretrain" / "encoder.pt").exists()
    runs = mlflow_runs(cluster_run["uri"], "sweep")
    assert sorted(r.data.params["seed"] for r in runs) == ["3", "4"]
    assert all(r.info.status == "FINISHED" for r in runs)
