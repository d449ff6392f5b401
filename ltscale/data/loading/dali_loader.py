"""The DALI backend: ``fn.decoders.image`` on ``mixed`` (CUDA) or ``cpu``, the presets as DALI ops.

**Feeding.** The sampler decides the ids, exactly as for the torch backend. When an epoch starts
the loader fixes the sampler's remaining batches (the *plan*) and builds a pipeline whose
``external_source`` pulls them itself: its callback (``_Source``) receives DALI's ``BatchInfo``,
reads batch ``info.iteration`` of the plan with the dataset's ``IndexedReader`` (one coalesced
pass), applies the error policy and returns the encoded bytes together with each sample's
manifest position and a small meta record (bytes read, read calls, skipped samples) that travel
through the pipeline as outputs — so a batch may be shorter than the pipeline's batch size
(skipped samples, the short last batch of an evaluation epoch) and the loader still knows which
samples it holds and what reading them cost. The callback is stateless (batch *i* depends on *i*
only) and raises ``StopIteration`` for every iteration past the plan, because DALI asks ahead.
The pipeline is pipelined and asynchronous with a queue of ``min(settings.prefetch, 2)`` batches:
while the training step consumes batch *i*, DALI's ``settings.workers`` threads decode and
augment the next ones. It is rebuilt every epoch and seeded from (seed, epoch, global slots
consumed, rank), so a resumed run starts from a reproducible stream.

Where the callback runs was chosen by measurement (the ``ltscale bench loader`` data: 600 JPEGs
of 500×375, SimCLR views at 224 px, batch 32, 2 CPU cores, medians of 3 alternating epochs, load
average 2.2–2.5): reading a batch and checking its bytes costs 0.02 ms of CPU per image against
~11 ms for the pipeline itself, so the callback runs **in this process** by default — 168 img/s,
against 144 with DALI's parallel external source in one forked worker process (the extra process
only competes for the two cores), 130 for the former ``feed_input`` loop without pipelining, and
225 for the torch backend. ``py_workers=N`` (constructor) turns on the parallel external source
(``parallel=True``, ``py_num_workers=N``, ``py_start_method="fork"``, ``prefetch_queue_depth``)
for storage where reading does cost (cold or network file systems); it is refused on CUDA, where
fork is impossible once CUDA is initialised (and spawn would start fresh interpreters every
epoch). DALI's own ``fn.readers.webdataset`` was not used: it reads shards in its own order
(per-shard sequential reads through a shuffle buffer), so it cannot give the sampler's ids per
(epoch, rank) — and reading is not the cost.

**CPU speed.** On CPU this backend stays slower than the torch backend (0.74× above): its CPU
kernels cost more per image than the torch backend's Pillow path, which decodes JPEGs at reduced
size (DCT scaling) and blurs with box-filter passes — one thread, two views: ~11 ms per image
here against ~8 ms (decode 1.05 ms; per view: random-resized crop 1.1, colour twist 1.4, Gaussian
blur up to 2.6). Feeding cannot close that gap on 2 cores; the blur and the colour twist already
run only on the samples that draw them (DALI conditional execution, ~1.5 ms per image saved). On
CUDA the decode (nvJPEG) and the augmentations run on the GPU, which is where this backend earns
its keep; on CPU it is a correctness-equivalent fallback.

Each sample is decoded once; every view is cut from that decode:

============================  ==========================================================
preset / ViewSpec field       DALI op
============================  ==========================================================
``crop="rrc"``                ``fn.random_resized_crop`` (random_area = crop_scale,
                              random_aspect_ratio = crop_ratio, 10 attempts, linear)
``crop="pad"``                ``fn.resize`` to size × size, then ``fn.slice`` of size × size
                              at a random integer start in [−padding, padding]² with
                              ``out_of_bounds_policy="pad"`` (zero fill) — the same as
                              padding by ``padding`` and a random crop
``flip``                      ``fn.flip(horizontal=coin_flip(flip))``
``jitter``/``jitter_p``       ``fn.color_twist`` (RGB) / ``fn.brightness_contrast`` (gray);
                              factors blended with a coin: f = 1 + coin·(u − 1), hue in
                              degrees = coin·u·360 with u ∈ [−h, h]; RGB: run only on the
                              samples whose jitter or grayscale coin is 1
``grayscale_p``               the same ``color_twist``: saturation × (1 − coin)
``blur_p``/``blur_sigma``     ``fn.gaussian_blur`` with σ = u, on the samples whose coin is 1
``solarize_p``                arithmetic: x + m·(255 − 2x), m = coin·(x ≥ 128)
``rotations``                 ``torch.rot90`` of each view on the device (0/90/180/270°)
eval                          ``fn.resize(resize_shorter=…)`` + centre ``fn.crop``
============================  ==========================================================

Differences from the Pillow backend (same recipe, not the same pixels): DALI's colour twist applies
brightness, contrast, saturation and hue in one fixed order (torchvision draws a random order) and
contrast pivots on mid-grey rather than the image's mean grey; the random streams are DALI's,
seeded from (sampler seed, epoch, global slots consumed), so runs are reproducible on this backend
but do not draw the same views as the torch backend.

Bad input: under ``on_error="skip"`` a sample whose read failed, or whose bytes are not a
structurally plausible image (JPEG: SOI marker and EOI ``FF D9`` at the end; PNG: signature and an
``IEND`` chunk; BMP/TIFF/WebP: their signatures), is left out of its batch and recorded in
``stats.skipped`` with its key and reason. Corruption *inside* a JPEG's entropy-coded data cannot be
detected before DALI's decoder, which then fails the whole batch: that raises a ``DataError`` naming
the batch's keys, under either policy. Under ``"fail"`` the first bad sample raises a ``DataError``
naming its key and shard.

Images leave the pipeline as uint8 HWC; they are laid out as (B, [V,] C, H, W) and normalised with
the loader's ``Normalizer`` on the device, so the values equal the torch backend's on the same
pixels.
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from ltscale.core.errors import DataError
from ltscale.data.loading.base import EpochStats, LoaderSettings, Normalizer, report_skipped
from ltscale.data.sampling import EpochSampler

_INSTALL = ("the DALI loader backend needs NVIDIA DALI, which is not installed: "
            "pip install nvidia-dali-cuda130 (or the wheel matching your CUDA version; see "
            "https://docs.nvidia.com/deeplearning/dali/). data.loader.backend=torch works "
            "without it.")


def _dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as exc:  # also a broken install (missing shared libraries)
        raise DataError(f"{_INSTALL} ({exc})") from None
    return fn, pipeline_def, types


# --- structural checks before the decoder ------------------------------------------------------
_TRAILING = b"\x00\r\n\t "


def check_image_bytes(data: bytes) -> str | None:
    """Why ``data`` cannot be a whole image (None when it is plausible). Only the container is
    checked: damage inside a JPEG's entropy-coded data passes and fails in the decoder."""
    if len(data) < 8:
        return f"{len(data)} bytes is too short for an image"
    if data[:3] == b"\xff\xd8\xff":
        if not data.rstrip(_TRAILING).endswith(b"\xff\xd9"):
            return "JPEG without its end-of-image marker (FF D9): the file is truncated"
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            return "PNG without its IEND chunk: the file is truncated"
        return None
    if data[:2] == b"BM" or data[:4] in (b"II*\x00", b"MM\x00*") or (
            data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    return f"not a JPEG, PNG, BMP, TIFF or WebP image (starts with {data[:8].hex(' ')})"


class _Source:
    """The external source's callback: batch ``info.iteration`` of the plan → its encoded bytes.

    One call reads one planned batch with the dataset's ``IndexedReader`` (one coalesced pass),
    applies the error policy and returns three per-sample outputs: the encoded bytes, the sample's
    manifest position (int64, shape (1,)) and a ``meta`` byte string that is empty except on the
    first sample, where it carries the batch's read counters and skipped samples as JSON. Positions
    and meta pass through the pipeline untouched, so the loader learns which samples a (possibly
    shorter) batch holds and what reading it cost even when the callback ran in a worker process.

    Stateless apart from the reader's lazily opened file descriptors (re-opened after a fork), as
    DALI's parallel external source requires: the result depends only on ``info.iteration``, and
    every iteration past the plan raises ``StopIteration`` (DALI may ask a few batches ahead).
    Errors raise ``DataError`` with the sample's key and shard (policy ``fail``) or for a batch
    whose every sample is bad (either policy).
    """

    def __init__(self, dataset, plan: list[np.ndarray]):
        self.reader, self.rows, self.on_error = dataset.reader, dataset.rows, dataset.on_error
        self.plan = plan

    def __call__(self, info):
        i = info.iteration if hasattr(info, "iteration") else int(info)
        if i >= len(self.plan):
            raise StopIteration
        batch = self.plan[i]
        reader = self.reader
        rows = self.rows[batch]
        before = reader.counters()
        raw = reader.read_many(rows)
        after = reader.counters()
        encoded, positions, skipped = [], [], []
        for pos, row, data in zip(batch.tolist(), rows.tolist(), raw):
            if isinstance(data, Exception):
                why = str(data)
            else:
                why = check_image_bytes(data)
                if why is not None:
                    why = f"{reader.where(row)}: cannot decode image ({why})"
            if why is not None:
                if self.on_error == "fail":
                    raise DataError(why)
                skipped.append((str(reader.index.key[row]), why))
                continue
            encoded.append(np.frombuffer(data, dtype=np.uint8))
            positions.append(np.array([pos], dtype=np.int64))
        if not encoded:
            raise DataError(f"every sample of a batch of {len(batch)} failed to load; first: "
                            f"{skipped[0][1]}")
        record = {k: after[k] - before[k] for k in after} | {"skipped": skipped}
        meta = [np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)]
        meta += [np.empty(0, dtype=np.uint8)] * (len(encoded) - 1)
        return encoded, positions, meta


_WORKER_ERROR = re.compile(r"(DataError|LtscaleError): (.*)", re.S)


def _data_error(exc: Exception) -> DataError | None:
    """The ``DataError`` a worker of the parallel external source raised, from DALI's wrapper
    (which carries the worker's traceback in its message); None for any other error."""
    for e in (exc, exc.__cause__):
        if isinstance(e, DataError):
            return DataError(str(e))
    found = _WORKER_ERROR.findall(str(exc))
    if not found:
        return None
    return DataError(found[-1][1].strip().splitlines()[0])


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class DaliLoader:
    MAX_DEPTH = 2    # batches the pipeline works ahead (each one is B decoded images of memory)

    def __init__(self, dataset, sampler: EpochSampler, settings: LoaderSettings, *,
                 device: torch.device, mean, std, preset=None, eval_spec=None,
                 channels: int = 3, py_workers: int = 0):
        self.fn, self.pipeline_def, self.types = _dali()
        if preset is None and eval_spec is None:
            raise DataError("the DALI loader needs an augmentation preset (training) or an "
                            "evaluation view (eval_spec)")
        if channels not in (1, 3):
            raise DataError(f"the DALI loader decodes 1 or 3 channels, not {channels}")
        self.dataset, self.sampler, self.settings = dataset, sampler, settings
        self.device = torch.device(device)
        self.preset, self.eval_spec, self.channels = preset, eval_spec, channels
        self.gpu = self.device.type == "cuda"
        if self.gpu:
            self.device_id = (self.device.index if self.device.index is not None
                              else torch.cuda.current_device())
        else:
            self.device_id = None
        self.num_threads = max(1, int(settings.workers))
        # the source's worker processes (0: the callback runs in this process; see the module
        # docstring) and how many batches the pipeline works ahead
        if py_workers and self.gpu:
            raise DataError("the DALI loader's source worker processes (py_workers) start by "
                            "fork, which is impossible once CUDA is initialised; use "
                            "py_workers=0 on CUDA (reading is not the cost there either)")
        self.py_workers = int(py_workers)
        self.depth = min(max(1, int(settings.prefetch or 1)), self.MAX_DEPTH)
        size = dataset.reader.index.size[dataset.rows]
        self._bytes_hint = int(size.max()) + 4096 if len(size) else 1 << 16
        self.normalize = Normalizer(mean, std)
        self.stats = EpochStats()

    def __len__(self) -> int:
        return self.sampler.remaining_batches()

    # --- the pipeline ---------------------------------------------------------------------------
    def _view(self, img, spec):
        fn, types = self.fn, self.types
        on = (lambda node: node.gpu()) if self.gpu else (lambda node: node)

        def coin(p, dtype=types.FLOAT):  # 0/1 per sample (coin_flip itself gives int32/uint8/bool)
            return fn.cast(fn.random.coin_flip(probability=p), dtype=dtype)

        s = spec.size
        if spec.crop == "pad":
            img = fn.resize(img, size=[s, s])
            p = int(spec.padding)
            if p:
                start = fn.random.uniform(values=[float(v) for v in range(-p, p + 1)], shape=[2])
                img = fn.slice(img, start=fn.cast(start, dtype=types.INT32), shape=[s, s],
                               axis_names="WH", out_of_bounds_policy="pad", fill_values=0)
        else:
            img = fn.random_resized_crop(img, size=[s, s], random_area=list(spec.crop_scale),
                                         random_aspect_ratio=list(spec.crop_ratio),
                                         num_attempts=10)
        if spec.flip:
            img = fn.flip(img, horizontal=fn.random.coin_flip(probability=spec.flip))
        b, c, sat, hue = spec.jitter
        jit = (coin(spec.jitter_p)
               if spec.jitter_p and any(spec.jitter) else None)
        gray = (coin(spec.grayscale_p)
                if spec.grayscale_p and self.channels == 3 else None)

        def factor(strength):
            if jit is None or strength <= 0:
                return 1.0
            u = fn.random.uniform(range=[max(0.0, 1 - strength), 1 + strength])
            return 1.0 + jit * (u - 1.0)

        if self.channels == 3 and (jit is not None or gray is not None):
            saturation = factor(sat)
            if gray is not None:
                saturation = saturation * (1.0 - gray)
            hue_deg = (jit * fn.random.uniform(range=[-hue * 360.0, hue * 360.0])
                       if jit is not None and hue > 0 else 0.0)
            br, ct = factor(b), factor(c)
            # only where jitter or grayscale applies (DALI's conditional execution runs the op
            # on those samples alone)
            flags = [f for f in (jit, gray) if f is not None]
            if (flags[0] if len(flags) == 1 else flags[0] + flags[1]) > 0:
                img = fn.color_twist(img, brightness=br, contrast=ct, saturation=saturation,
                                     hue=hue_deg)
        elif jit is not None and (b > 0 or c > 0):
            img = fn.brightness_contrast(img, brightness=factor(b), contrast=factor(c))
        if spec.blur_p:
            sigma = fn.random.uniform(range=list(spec.blur_sigma))
            if fn.random.coin_flip(probability=spec.blur_p, dtype=types.BOOL):
                img = fn.gaussian_blur(img, sigma=sigma)  # only the samples that blur
        if spec.solarize_p:
            x = fn.cast(img, dtype=types.INT16)
            m = fn.cast(x >= 128, dtype=types.INT16) * on(coin(spec.solarize_p, types.INT16))
            img = fn.cast(x + m * (255 - 2 * x), dtype=types.UINT8)
        return img

    def _build(self, plan: list[np.ndarray]):
        fn, types = self.fn, self.types
        sampler = self.sampler
        parallel = self.py_workers > 0
        source = _Source(self.dataset, plan)

        @self.pipeline_def(enable_conditionals=True)
        def pipe():
            enc, pos, meta = fn.external_source(
                source=source, num_outputs=3, batch=True, batch_info=True, parallel=parallel,
                dtype=[types.UINT8, types.INT64, types.UINT8], ndim=[1, 1, 1], device="cpu",
                **({"bytes_per_sample_hint": self._bytes_hint,
                    "prefetch_queue_depth": self.depth} if parallel else {}))
            img = fn.decoders.image(enc, device="mixed" if self.gpu else "cpu",
                                    output_type=types.GRAY if self.channels == 1 else types.RGB)
            if self.preset is None:
                e = self.eval_spec
                img = fn.resize(img, resize_shorter=e.resize)
                views = (fn.crop(img, crop=[e.size, e.size], out_of_bounds_policy="pad"),)
            else:
                views = tuple(self._view(img, spec) for spec in self.preset.views)
            return (pos, meta) + views

        p = pipe(batch_size=sampler.batch_size, num_threads=self.num_threads,
                 device_id=self.device_id,
                 seed=_seed(sampler.seed, sampler.epoch, sampler.global_consumed(), sampler.rank),
                 prefetch_queue_depth=self.depth, exec_pipelined=True, exec_async=True,
                 **({"py_num_workers": self.py_workers, "py_start_method": "fork"}
                    if parallel else {}))
        p.build()
        return p

    # --- one batch --------------------------------------------------------------------------------
    def _to_torch(self, out) -> torch.Tensor:
        """One pipeline output (uint8 NHWC) → a uint8 torch tensor on the device."""
        if self.gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            t = out.as_tensor()
            x = torch.empty(t.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(t, x, cuda_stream=torch.cuda.current_stream(self.device))
            return x
        return torch.from_numpy(out.as_array())

    def _run(self, pipe, planned: np.ndarray):
        """The pipeline's next batch (the one planned as ``planned``): (x, positions, info)."""
        try:
            outs = pipe.run()
        except Exception as exc:  # DALI wraps a worker's error in a plain Exception
            err = _data_error(exc)
            if err is not None:  # the source's error policy, raised in a worker or here
                raise err from None
            if "decoders.image" not in str(exc):
                raise  # not the data's fault
            keys = [str(self.dataset.reader.index.key[r]) for r in self.dataset.rows[planned]]
            shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            said = str(exc).replace("Current pipeline object is no longer valid.", "")
            said = said.split("encountered:", 1)[-1].strip().splitlines()
            said = " ".join(line.strip() for line in said[:3] if line.strip()
                            and not line.startswith(("C++ context", "Current pipeline")))
            raise DataError(f"DALI could not decode a batch of {len(keys)} samples ({shown}); "
                            "one of them is corrupt inside its image data, which the loader "
                            "cannot detect before decoding — find it with `ltscale data verify "
                            "--deep` or use data.loader.backend=torch. DALI's decoders.image "
                            f"said: "
                            f"{said}") from None
        pos, meta, outs = outs[0], outs[1], outs[2:]
        positions = np.concatenate([np.asarray(pos[i]) for i in range(len(pos))])
        info = json.loads(np.asarray(meta[0]).tobytes())
        info["skipped"] = [tuple(s) for s in info["skipped"]]
        views = [self._to_torch(o) for o in outs]
        x = torch.stack(views, 1) if len(views) > 1 else views[0][:, None]  # (B, V, H, W, C)
        x = self.normalize(x.to(self.device, non_blocking=True).permute(0, 1, 4, 2, 3))
        if self.preset is not None and self.preset.rotations:
            x = torch.stack([torch.rot90(x[:, v], k, dims=(-2, -1))
                             for v in range(x.shape[1]) for k in range(4)], 1)
        return (x[:, 0] if x.shape[1] == 1 else x.contiguous()), positions, info

    def __iter__(self):
        self.stats = EpochStats()
        # the remaining batches, fixed now (as for torch); the source reads them in this order
        plan = [b.positions for b in self.sampler.batches()]
        if not plan:
            return
        pipe = self._build(plan)
        try:
            for planned in plan:
                x, positions, info = self._run(pipe, planned)
                self.stats.add(len(positions), info)
                y = torch.from_numpy(self.dataset.labels[positions])
                yield x, y, torch.from_numpy(positions)
        finally:
            del pipe
        report_skipped(self.stats, f"epoch {self.sampler.epoch}")
