"""`ltscale bench finetune` runs the stage's feature cache and head at a toy size (it called a
private head constructor with a stale signature and raised TypeError before this test)."""

from ltscale.bench.finetune import bench_finetune


def test_bench_finetune_trains_the_same_head_both_ways(capsys):
    r = bench_finetune(images=40, classes=4, size=16, epochs=2, batch_size=16)
    assert r["images"] == 40 and r["epochs"] == 2
    assert r["cached"]["head_seconds"] > 0 and r["reencode"]["encode_seconds"] > 0
    assert 0.0 <= r["cached"]["train_accuracy"] <= 1.0
    assert r["per_epoch_speedup"] > 0
    assert "speed-up" in capsys.readouterr().out
