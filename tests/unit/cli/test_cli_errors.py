"""Bad input through the command line: one clear paragraph, exit code 2, nothing half-written."""

from ltscale.cli import main


def test_manifest_from_other_shards_is_refused(tiny_idx, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["data", "build", "idx", str(tiny_idx), "--out", str(a)]) == 0
    assert main(["data", "build", "idx", str(tiny_idx), "--out", str(b),
                 "--shard-size", "10000"]) == 0
    assert main(["manifest", "make", str(a), "--noise", "sym:0.2", "--out",
                 str(tmp_path / "m.npz")]) == 0
    capsys.readouterr()
    rc = main(["pretrain", "recipes/quickstart.yaml", f"data.shards={b}",
               f"data.source.path={tiny_idx}", f"manifest.file={tmp_path / 'm.npz'}",
               f"output_dir={tmp_path / 'out'}", "--no-track"])
    err = capsys.readouterr().err
    assert rc == 2 and "was built from index" in err and str(b) in err
    assert "Traceback" not in err


def test_corrupt_checkpoint_for_finetune(tmp_path, tiny_idx, capsys):
    bad = tmp_path / "encoder.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["finetune", "recipes/quickstart.yaml", "--from", str(bad),
               f"data.shards={tmp_path / 'shards'}", f"data.source.path={tiny_idx}",
               f"output_dir={tmp_path / 'out'}", "--no-track"])
    err = capsys.readouterr().err
    assert rc == 2 and "encoder.pt: not a readable checkpoint" in err


def test_from_a_missing_path(tmp_path, capsys):
    rc = main(["eval", "recipes/quickstart.yaml", "--from", str(tmp_path / "x" / "head.pt"),
               "--no-track"])
    assert rc == 2 and "no such file or directory" in capsys.readouterr().err


def test_unknown_source_kind(tmp_path, capsys):
    rc = main(["data", "build", "cifar99", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown source kind 'cifar99'; known kinds: cifar10, cifar100" in capsys.readouterr().err
