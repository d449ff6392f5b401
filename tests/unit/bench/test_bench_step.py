"""`ltscale bench step` reports wall and process CPU time per step for both sides."""

import pytest

from ltscale.bench.step import bench_step


def test_bench_step_reports_wall_and_cpu_time_per_step(capsys):
    r = bench_step(batch=4, size=16, steps=2, repeats=2, threads=1)
    for side in ("bare", "engine"):
        assert r[f"{side}_ms"] > 0 and r[f"{side}_cpu_ms"] > 0
        assert len(r["runs"][side]) == len(r["cpu_runs"][side]) == 2
    assert r["cpu_overhead"] == pytest.approx(r["engine_cpu_ms"] / r["bare_cpu_ms"] - 1)
    out = capsys.readouterr().out
    assert "CPU ms/step" in out and "overhead" in out and r["threads"] == 1
