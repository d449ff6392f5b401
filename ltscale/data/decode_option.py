"""``data.loader.decode``: where the torch backend decodes JPEGs. Torch-free, so the recipe schema
can check it without importing the loaders."""

from __future__ import annotations

DECODES = ("cpu", "gpu")


def decode_refusal(backend: str, decode: str) -> str | None:
    """Why ``decode`` cannot go with loader ``backend`` (None when it can). Only the torch
    backend takes ``gpu``: DALI decodes on the GPU by itself (``mixed``) and the stream backend in
    its own webdataset pipeline."""
    if decode not in DECODES:
        return f"unknown data.loader.decode {decode!r}; choose one of {', '.join(DECODES)}"
    if decode == "gpu" and backend != "torch":
        why = ("DALI already decodes on the GPU when training on CUDA (decoders.image on 'mixed')"
               if backend == "dali" else
               "the stream backend decodes in its own webdataset pipeline")
        return (f"data.loader.decode=gpu works with data.loader.backend=torch only, not "
                f"{backend}: {why}; set data.loader.decode=cpu or data.loader.backend=torch")
    return None
