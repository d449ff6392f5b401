"""The training process's side of ``data.loader.decode: gpu`` (torch backend, no DALI needed).

The loader workers hand over ``EncodedBatch``es (``data/encoded.py``): JPEG bytes plus each view's
drawn parameters. Here the whole batch's JPEGs are decoded in one call,
``torchvision.io.decode_jpeg(list, device=…)`` — nvJPEG's batched decoder on CUDA, libjpeg-turbo
in this process on a CPU device (slower than the Pillow path's decoding in the workers; that case
exists for machines without a GPU and for tests, and is logged once) — to the recipe's channels
(``GRAY`` for one, ``RGB`` for three). Samples the workers decoded (no JPEG) are copied over as
they are. ``augment_device`` then makes the views on the device.

Errors keep the Pillow path's contract: when the batched call fails, the batch's JPEGs are
decoded one by one to find the bad ones (on CUDA, a JPEG nvJPEG refuses is tried once more with
the CPU decoder, for the formats nvJPEG lacks); a JPEG that still fails is a ``DataError``
``sample KEY in shard NAME: cannot decode image (why)`` — raised under ``on_error: fail``, left
out of its batch and reported in the epoch's skipped samples under ``skip``; a batch whose every
sample failed stops the run either way.

On CUDA all of it runs on a CUDA stream of its own, which the training stream then waits for.
torchvision marks its image decoders deprecated from 0.29 in favour of TorchCodec (a
``DeprecationWarning``); ``decode_jpeg`` still works and is what this backend uses.
"""

from __future__ import annotations

import logging
import re

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ltscale.core.errors import DataError
from ltscale.data.augment_device import eval_views, train_views

logger = logging.getLogger(__name__)
_warned = False
_SOURCE = re.compile(r"^.*?\.(?:cpp|cu|h):\d+,\s*")  # torchvision's "decode_jpeg, FILE:LINE, "


def _why(exc: Exception) -> str:
    return _SOURCE.sub("", str(exc).strip()).splitlines()[0] if str(exc).strip() else repr(exc)


class DeviceDecoder:
    """``EncodedBatch`` → (uint8 views on ``device``, labels, positions) under ``on_error``."""

    def __init__(self, views, device: torch.device, on_error: str = "fail"):
        global _warned
        if not hasattr(views, "plan"):
            raise DataError(f"data.loader.decode=gpu needs TrainViews or EvalView views, not "
                            f"{type(views).__name__}")
        self.views, self.device, self.on_error = views, device, on_error
        self.mode = ImageReadMode.GRAY if views.channels == 1 else ImageReadMode.RGB
        self._stream = None
        if device.type != "cuda" and not _warned:
            _warned = True
            logger.warning(f"data.loader.decode=gpu on a {device.type} device: JPEGs are decoded "
                           "by torchvision's CPU decoder in the training process, not on a GPU "
                           "(data.loader.decode=cpu decodes them in the loader workers)")

    def __call__(self, batch, labels: torch.Tensor, positions: torch.Tensor, info: dict):
        if self.device.type != "cuda":
            return self._views(batch, labels, positions, info)
        # a stream of its own: the views of batch t+1 are made while step t runs, and nothing
        # else is queued on it when the decoder starts — torchvision's CUDA decoder takes its
        # output memory from the current stream's pool but writes it from a stream of its own
        # without waiting, so a block freed while kernels still read it could be overwritten
        # (pytorch/vision#9606)
        main = torch.cuda.current_stream(self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.synchronize()
        with torch.cuda.stream(self._stream):
            x, labels, positions = self._views(batch, labels, positions, info)
        main.wait_stream(self._stream)
        x.record_stream(main)  # its memory is not reused on our stream while the step reads it
        return x, labels, positions

    def _views(self, batch, labels, positions, info):
        images, failed = self.decode(batch)
        if failed:
            if self.on_error == "fail":
                raise DataError(failed[0][1])
            info["skipped"] = list(info.get("skipped", ())) + [(batch.keys[i], why)
                                                                for i, why in failed]
            keep = [i for i, img in enumerate(images) if img is not None]
            if not keep:
                total = len(batch) + len(info["skipped"]) - len(failed)
                raise DataError(f"every sample of a batch of {total} failed to load; first: "
                                f"{info['skipped'][0][1]}")
            images = [images[i] for i in keep]
            plans = [batch.plans[i] for i in keep]
            labels, positions = labels[keep], positions[keep]
        else:
            plans = batch.plans
        if plans[0] is None:  # evaluation views
            return eval_views(images, self.views.spec), labels, positions
        return train_views(images, plans, self.views.preset.rotations), labels, positions

    def decode(self, batch) -> tuple[list, list[tuple[int, str]]]:
        """(each sample's image (C, H, W) uint8 on the device, None where it failed;
        [(sample index, error message)])."""
        images: list = [None] * len(batch)
        jpegs = [i for i in range(len(batch)) if batch.shapes[i] is None]
        for i in range(len(batch)):
            if batch.shapes[i] is not None:
                images[i] = batch.payload(i).to(self.device, non_blocking=True)
        failed = []
        if jpegs:
            try:
                decoded = decode_jpeg([batch.payload(i) for i in jpegs], mode=self.mode,
                                      device=self.device)
                for i, img in zip(jpegs, decoded):
                    images[i] = img
            except RuntimeError:  # one bad JPEG fails the whole call: find it
                for i in jpegs:
                    images[i], why = self._one(batch.payload(i))
                    if why is not None:
                        failed.append((i, f"{batch.where[i]}: cannot decode image ({why})"))
        return images, failed

    def _one(self, data: torch.Tensor):
        try:
            return decode_jpeg(data, mode=self.mode, device=self.device), None
        except RuntimeError as exc:
            why = _why(exc)
        if self.device.type == "cpu":
            return None, why
        try:  # a JPEG nvJPEG does not support (e.g. arithmetic coding) may still be readable
            return decode_jpeg(data, mode=self.mode).to(self.device), None
        except RuntimeError as exc:
            return None, _why(exc)
