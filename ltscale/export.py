"""Export a pretrained encoder (``encoder.pt``) for use outside ltscale, each file verified.

Formats:

* ``torchvision``: a plain state dict (``torch.save`` of name → tensor, loadable with
  ``weights_only=True``) for ``torchvision.models.resnet18/34/50``. The encoder has no classifier,
  so there are no ``fc.*`` keys: set ``model.fc = torch.nn.Identity()`` before
  ``model.load_state_dict(sd)`` (strict), and the model returns the 512/2048-d pooled features
  ltscale's encoder returns. Only an encoder with torchvision's own network is exported this way:
  the ImageNet stem (7×7 stride-2 conv1 + max-pool) and 3 input channels. An encoder with the
  CIFAR stem (3×3 stride-1 conv1, no max-pool) or another channel count is refused, since
  torchvision's constructor cannot build it (conv1 has another shape) and a state dict that needs
  a hand-edited model is not what the format promises; export it as ONNX. timm's ``resnet18/34/
  50`` (default stem) use the same parameter names as torchvision (timm keeps them for weight
  compatibility), so this file also loads into ``timm.create_model(name, num_classes=0)``; no
  separate timm format is written.
* ``onnx``: the encoder as an ONNX graph (input ``images``: N×C×H×W float32, the batch dimension
  dynamic; output ``features``: N×D), written by torch's ONNX exporter (``dynamo=True``, needs
  ``onnx`` and ``onnxscript``) and checked with ``onnxruntime``: the optional extra ``export``.

Every file is written under a temporary name, loaded back and run on a random batch beside the
ltscale encoder; only when the largest absolute difference of the features is within
``atol`` · max(1, max |feature|) is it renamed into place. A mismatch is an ``ExportError`` and
leaves no file. ``export.json`` beside the files records what was exported and the differences.
An existing file is replaced only when ltscale wrote it (``ltscale.core.owned``; ``force``: any file),
checked for every file before the first is written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ltscale.core.errors import CheckpointError, LtscaleError
from ltscale.core.owned import check_replace, owned_path

FORMATS = ("torchvision", "onnx")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
ATOL = 1e-4
ONNX_EXTRA = "pip install 'ltscale[export]' (onnx, onnxscript, onnxruntime)"


class ExportError(LtscaleError):
    """An export is impossible for this encoder, or its file did not reproduce the encoder."""


def read_source(path: str | Path) -> tuple[dict, torch.nn.Module]:
    """The encoder file's contents and the rebuilt encoder (eval mode); errors name the file."""
    from ltscale.models import backbone_names
    from ltscale.models.files import encoder_from_file_contents, read_encoder_file

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass its encoder.pt")
    saved = read_encoder_file(path)
    if saved["backbone"] not in backbone_names():
        raise CheckpointError(f"{path}: unknown architecture {saved['backbone']!r} (known: "
                              f"{', '.join(backbone_names())})")
    return saved, encoder_from_file_contents(saved, path).eval()


def torchvision_refusal(saved: dict) -> str | None:
    """Why the encoder cannot be a torchvision state dict, or None when it can."""
    arch = saved["backbone"]
    if arch not in TORCHVISION_ARCHS:
        return (f"{arch} has no torchvision counterpart (torchvision export: "
                f"{', '.join(TORCHVISION_ARCHS)})")
    if saved["cifar_stem"]:
        return (f"this {arch} has the CIFAR stem (3×3 stride-1 conv1, no max-pool); "
                f"torchvision.models.{arch} has a 7×7 stride-2 conv1 and a max-pool, so the "
                "weights do not load into it")
    if int(saved["in_chans"]) != 3:
        return (f"this {arch} takes {saved['in_chans']}-channel images; torchvision's takes 3")
    return None


def default_image_size(saved: dict) -> int:
    small = saved["cifar_stem"] or not saved["backbone"].startswith("resnet") or \
        saved["backbone"] == "resnet_tiny"
    return 32 if small else 224


def _features(encoder: torch.nn.Module, x: torch.Tensor):
    """The ltscale encoder's output, the reference every exported file must reproduce."""
    with torch.no_grad():
        return encoder(x).float()


def check_close(name: str, path: Path, got, want: torch.Tensor, atol: float) -> float:
    got = torch.as_tensor(got, dtype=torch.float32)
    if tuple(got.shape) != tuple(want.shape):
        raise ExportError(f"{path}: {name} gives features of shape {tuple(got.shape)}, the "
                          f"encoder {tuple(want.shape)}; nothing written")
    diff = float((got - want).abs().max())
    allowed = atol * max(1.0, float(want.abs().max()))
    if not diff <= allowed:  # NaN fails too
        raise ExportError(f"{path}: {name} does not reproduce the encoder (max abs difference "
                          f"{diff:.3g} > {allowed:.3g}); nothing written")
    return diff


def export_torchvision(saved: dict, encoder, source: Path, out: Path, x: torch.Tensor,
                       atol: float = ATOL, force: bool = False) -> float:
    """Write ``out`` (see the module doc); return the verified max abs difference."""
    import torchvision

    why = torchvision_refusal(saved)
    if why:
        raise ExportError(f"{source}: no torchvision export: {why}; use --format onnx")
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    want = _features(encoder, x)
    with owned_path(out, "--out", force) as tmp:
        torch.save(state, tmp)
        loaded = torch.load(tmp, map_location="cpu", weights_only=True)
        model = getattr(torchvision.models, saved["backbone"])(weights=None)
        model.fc = torch.nn.Identity()
        try:
            model.load_state_dict(loaded, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"{out}: does not load into torchvision.models."
                              f"{saved['backbone']} ({str(exc).splitlines()[0]}); nothing "
                              "written") from None
        diff = check_close(f"torchvision.models.{saved['backbone']}", out,
                           _features(model.eval(), x), want, atol)
    return diff


def _onnx_modules():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the package {exc.name}: {ONNX_EXTRA}") from None
    return onnxruntime


def export_onnx(encoder, out: Path, x: torch.Tensor, atol: float = ATOL,
                force: bool = False) -> float:
    """Write ``out`` (see the module doc); return the verified max abs difference, over a batch
    of another size than the one traced (the batch dimension is dynamic)."""
    ort = _onnx_modules()
    want = _features(encoder, x)
    trace = x[:2] if len(x) > 2 else x
    with owned_path(out, "--out", force) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (trace,), str(tmp), dynamo=True, verbose=False,
                              input_names=["images"], output_names=["features"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                              external_data=False)
        try:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run(["features"], {"images": x.numpy()})[0]
        except Exception as exc:  # onnxruntime raises its own types for a graph it rejects
            raise ExportError(f"{out}: onnxruntime cannot run the exported graph "
                              f"({type(exc).__name__}: {exc}); nothing written") from None
        diff = check_close("onnxruntime", out, got, want, atol)
    return diff


def export_encoder(source: str | Path, out_dir: str | Path | None = None,
                   formats: tuple[str, ...] | None = None, image_size: int | None = None,
                   batch: int = 3, atol: float = ATOL, seed: int = 0, log=print,
                   force: bool = False) -> dict:
    """Export the encoder file ``source`` into ``out_dir`` (default: ``<its folder>/export``).

    ``formats`` None: torchvision when the encoder fits it (else a note says why not) and onnx.
    Returns {"files": {format: path}, "max_abs_diff": {format: float}, "skipped": {format: why}}.
    """
    source = Path(source)
    saved, encoder = read_source(source)
    unknown = [f for f in formats or () if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format {unknown[0]!r} (formats: {', '.join(FORMATS)})")
    skipped = {}
    if formats is None:
        why = torchvision_refusal(saved)
        formats = FORMATS if why is None else ("onnx",)
        if why:
            skipped["torchvision"] = why
    if "onnx" in formats:
        _onnx_modules()  # a missing package is said before any file is written
    out_dir = Path(out_dir) if out_dir is not None else source.parent / "export"
    size = image_size or default_image_size(saved)
    x = torch.randn(batch, int(saved["in_chans"]), size, size,
                    generator=torch.Generator().manual_seed(seed))
    arch = saved["backbone"]
    names = {"torchvision": f"{arch}_torchvision.pt", "onnx": f"{arch}.onnx"}
    for name in [names[f] for f in formats] + ["export.json"]:
        check_replace(out_dir / name, "--out", force)  # before the first file is written
    files, diffs = {}, {}
    for fmt in formats:
        path = out_dir / names[fmt]
        if fmt == "torchvision":
            diffs[fmt] = export_torchvision(saved, encoder, source, path, x, atol, force)
        else:
            diffs[fmt] = export_onnx(encoder, path, x, atol, force)
        files[fmt] = path
        log(f"{fmt}: {path} (verified: max abs difference {diffs[fmt]:.3g} on a random "
            f"{tuple(x.shape)} batch)")
    for fmt, why in skipped.items():
        log(f"{fmt}: not exported: {why}")
    record = {
        "source": str(source.resolve()), "architecture": arch, "cifar_stem": saved["cifar_stem"],
        "in_chans": int(saved["in_chans"]), "feat_dim": int(saved.get("feat_dim") or 0),
        "files": {k: v.name for k, v in files.items()}, "max_abs_diff": diffs,
        "verified_input_shape": list(x.shape), "atol": atol, "skipped": skipped}
    with owned_path(out_dir / "export.json", "--out", force) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {"files": files, "max_abs_diff": diffs, "skipped": skipped}
