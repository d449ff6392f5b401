"""`ltscale export`: torchvision state dicts and ONNX files that reproduce the encoder, refusals
that name the file, and no file left behind when the check fails."""

import json
import sys

import pytest
import torch
import torchvision

from ltscale import export as ex
from ltscale.cli import main
from ltscale.models import create_backbone

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxscript, onnxruntime)")


def encoder_file(tmp_path, name, cifar_stem=False, in_chans=3, seed=0):
    torch.manual_seed(seed)
    enc = create_backbone(name, in_chans=in_chans, cifar_stem=cifar_stem)
    for m in enc.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    folder = tmp_path / f"{name}_{'cifar' if cifar_stem else 'imagenet'}"
    folder.mkdir()
    path = folder / "encoder.pt"
    torch.save({"backbone": name, "cifar_stem": cifar_stem, "in_chans": in_chans,
                "feat_dim": enc.feat_dim, "state_dict": enc.state_dict()}, path)
    return path, enc.eval()


def test_imagenet_stem_resnet18_torchvision_and_onnx(tmp_path, capsys):
    import onnxruntime

    path, enc = encoder_file(tmp_path, "resnet18")
    out = tmp_path / "out"
    assert main(["export", str(path.parent), "--out", str(out), "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "torchvision: " in printed and "onnx: " in printed and "max abs difference" in printed
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = enc(x)
    sd = torch.load(out / "resnet18_torchvision.pt", weights_only=True)
    assert not any(k.startswith("fc.") for k in sd)
    tv = torchvision.models.resnet18(weights=None)
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(x), want, atol=1e-5, rtol=1e-5)
    session = onnxruntime.InferenceSession(str(out / "resnet18.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    meta = json.loads((out / "export.json").read_text())
    assert meta["architecture"] == "resnet18" and set(meta["files"]) == {"torchvision", "onnx"}
    assert not list(out.glob("*.partial"))


def test_cifar_stem_is_refused_for_torchvision_but_exported_as_onnx(tmp_path, capsys):
    path, _ = encoder_file(tmp_path, "resnet18", cifar_stem=True)
    out = tmp_path / "out"
    assert main(["export", str(path), "--out", str(out), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "CIFAR stem" in err and "onnx" in err
    assert not out.exists() or not list(out.iterdir())
    result = ex.export_encoder(path, out, log=lambda *_: None)  # default: what fits
    assert set(result["files"]) == {"onnx"} and "CIFAR stem" in result["skipped"]["torchvision"]
    assert result["max_abs_diff"]["onnx"] < 1e-4


def test_cifar_resnet_family_exports_as_onnx(tmp_path):
    path, _ = encoder_file(tmp_path, "resnet_tiny", in_chans=1)
    result = ex.export_encoder(path, formats=("onnx",), log=lambda *_: None)
    assert result["files"]["onnx"] == path.parent / "export" / "resnet_tiny.onnx"
    assert result["files"]["onnx"].stat().st_size > 1000
    with pytest.raises(ex.ExportError, match="no torchvision counterpart"):
        ex.export_encoder(path, formats=("torchvision",), log=lambda *_: None)


@pytest.mark.parametrize("fmt", ["torchvision", "onnx"])
def test_a_file_that_does_not_reproduce_the_encoder_is_not_left(tmp_path, monkeypatch, fmt):
    path, _ = encoder_file(tmp_path, "resnet18" if fmt == "torchvision" else "resnet_tiny")
    real, calls = ex._features, []

    def shifted_reference(model, x):  # the first call is the encoder's reference output
        calls.append(1)
        return real(model, x) + (1.0 if len(calls) == 1 else 0.0)

    monkeypatch.setattr(ex, "_features", shifted_reference)
    out = tmp_path / "out"
    with pytest.raises(ex.ExportError, match="does not reproduce the encoder"):
        ex.export_encoder(path, out, formats=(fmt,), image_size=32, log=lambda *_: None)
    assert not list(out.iterdir())  # neither the file nor its temporary


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope" / "encoder.pt"
    assert main(["export", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    unknown = tmp_path / "unknown.pt"
    torch.save({"backbone": "vit_b_16", "cifar_stem": False, "in_chans": 3, "state_dict": {}},
               unknown)
    for bad, phrase in ((garbage, "not a readable checkpoint"),
                        (other, "not an ltscale encoder file"),
                        (unknown, "unknown architecture 'vit_b_16'")):
        assert main(["export", str(bad), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and phrase in err, err
    assert not (tmp_path / "o").exists()


def test_missing_onnx_packages_are_named(tmp_path, monkeypatch):
    path, _ = encoder_file(tmp_path, "resnet_tiny")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ex.ExportError, match=r"onnxruntime.*ltscale\[export\]"):
        ex.export_encoder(path, formats=("onnx",), log=lambda *_: None)
    assert not (path.parent / "export").exists()
