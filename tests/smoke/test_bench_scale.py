"""`ltscale bench scale --quick`: every stage runs at two tiny sizes; the table and exponents."""

import json

from ltscale.bench.scale import QUICK_FRACTIONS
from ltscale.bench.scale_stages import STAGES
from ltscale.cli import main

FAST = [s for s in STAGES if s not in ("pretrain", "cache")]  # those two: tests/smoke elsewhere


def test_bench_scale_quick_table_and_exponents(capsys, tmp_path):
    out = tmp_path / "scale.md"
    rc = main(["bench", "scale", "--quick", "--datasets", "imagenet_lt", "--stages",
               ",".join(FAST), "--json", "--out", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert len(rows) == len(FAST) * len(QUICK_FRACTIONS)
    assert {(r["stage"], r["fraction"]) for r in rows} == {
        (s, f) for s in FAST for f in QUICK_FRACTIONS}
    for r in rows:
        assert r["seconds"] > 0 and r["peak_mb"] is not None
        assert r["samples"] > 0 and r["classes"] > 0
    assert [r for r in rows if r["stage"] == "loader"][0]["worker_pss_mb"] > 0
    assert len(result["exponents"]) == len(FAST)
    for e in result["exponents"]:
        assert isinstance(e["time_exponent"], float), e
        assert len(e["sizes"]) == 2
    table = out.read_text()
    assert table.count("| imagenet_lt |") == len(FAST) * (len(QUICK_FRACTIONS) + 1)


def test_bench_scale_skips_data_stages_over_max_images(capsys):
    rc = main(["bench", "scale", "--quick", "--datasets", "inat2018", "--stages", "build",
               "--max-images", "10", "--sizes", "0.001", "--json"])
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["seconds"] is None and "skipped" in row["note"]
