"""The recipe schema: ``Recipe`` and its data, manifest, eval, engine, tracking and reference
sections (pretraining's in ``config.pretrain``, the supervised stages' in ``config.supervised``).

Every section forbids unknown keys, so a typo fails before any work with the dotted key and what
was expected.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ltscale.config.pretrain import PretrainCfg
from ltscale.config.supervised import BaselinesCfg, FinetuneCfg, SelfTrainCfg
from ltscale.core.errors import LtscaleError
from ltscale.core.section import Section
from ltscale.data.decode_option import decode_refusal
from ltscale.data.manifest_spec import EvalSelection, ImbalanceSpec, NoiseSpec

# every seed is a whole run of the training stages; papers report 3 to 5, and 1,000 runs of even
# a one-minute recipe take 17 hours
SEEDS_MAX = 1000


class SourceCfg(Section):
    kind: str = "idx"        # any `ltscale data build` KIND
    path: str = "/usr/share/datasets/fashion-mnist"
    options: dict[str, str] = {}  # source options, as `--option NAME=VALUE`


class LoaderCfg(Section):
    # torch: DataLoader workers; dali: needs `pip install nvidia-dali-cuda130`; stream: webdataset
    # pipeline for shards that can only be streamed (see ltscale/data/loading/stream_loader.py)
    backend: Literal["torch", "dali", "stream"] = "torch"
    # torch backend: cpu (Pillow in the workers) | gpu (workers hand over JPEG bytes and drawn
    # view parameters; decoded with torchvision's nvJPEG batch decoder and augmented on the
    # training device; ltscale/data/loading/decode_gpu.py)
    decode: Literal["cpu", "gpu"] = "cpu"
    urls: str | None = None                    # stream: URL template with {shard}
    shuffle_buffer: int = Field(5000, gt=0)    # stream: shuffle buffer (samples)
    prefetch: int = Field(4, gt=0)             # batches queued ahead per worker
    pin_memory: bool | None = None             # None: when training on CUDA
    on_error: Literal["fail", "skip"] = "fail"  # a corrupt/truncated sample: stop, or skip + report
    check: Literal["size", "checksum", "none"] = "size"  # shard check before training
    shuffle: Literal["global", "block"] = "global"  # block: shard-local blocks (page-cache friendly)
    block_size: int = Field(64, gt=0)          # samples per on-disk block (block shuffle)
    window: int = Field(16, gt=0)              # blocks mixed together (block shuffle)

    @model_validator(mode="after")
    def _decode_on_torch(self):
        refusal = decode_refusal(self.backend, self.decode)
        if refusal:
            raise ValueError(refusal)
        return self


class DataCfg(Section):
    source: SourceCfg = SourceCfg()
    loader: LoaderCfg = LoaderCfg()
    shards: str = "runs/data/fashion-mnist"   # built from `source` when absent
    shard_bytes: int = Field(1 << 30, gt=0)
    image_size: int = Field(28, gt=0)
    channels: Literal[1, 3] = 1
    # one value per channel (the defaults too: checked against data.channels)
    mean: list[float] = Field([0.286], validate_default=True)
    std: list[float] = Field([0.353], validate_default=True)
    eval_crop_fraction: float | None = Field(None, gt=0, le=1)  # None: 0.875 from 96 px, else 1

    @field_validator("mean", "std")
    @classmethod
    def _one_per_channel(cls, v, info):
        """One finite value per channel; a standard deviation above 0 (images are divided by
        it: a 0 makes every pixel infinite)."""
        channels = info.data.get("channels")
        if channels is not None and len(v) != channels:
            raise ValueError(f"{len(v)} value(s) but data.channels is {channels}; give one "
                             "value per channel")
        if not all(math.isfinite(x) for x in v):
            raise ValueError("every value must be a finite number")
        if info.field_name == "std" and any(x <= 0 for x in v):
            raise ValueError("a standard deviation must be above 0 (images are divided by it)")
        return v


def _check(parse, value, result: bool = False):
    try:
        out = parse(value)
    except LtscaleError as exc:
        raise ValueError(str(exc)) from None
    return out if result else value


class UnlabeledCfg(Section):
    multiple: float = Field(0.0, ge=0)      # |D_U| as a multiple of the labeled set; 0: none
    ratio: float = Field(1.0, ge=1)         # ρ_U
    relevance: float = Field(1.0, ge=0, le=1)
    ood_split: str | None = None
    split: str | None = None


class ManifestCfg(Section):
    file: str | None = None   # a manifest made by `ltscale manifest make`; replaces the spec below
    split: str = "train"
    imbalance: str = "exp:100"
    class_order: Literal["index", "perm"] = "index"
    noise: str = "sym:0.4"    # text form, or a mapping {kind: human, file: ..., label_set: ...}
    seed: int = Field(0, ge=0, lt=2**32)
    max_per_class: int | None = Field(None, gt=0)
    few_labels: float | None = Field(None, gt=0, le=1)
    unlabeled: UnlabeledCfg = UnlabeledCfg()
    val: str | None = None    # SPLIT[:PER_CLASS] balanced selection
    test: str | None = None

    @field_validator("val", "test")
    @classmethod
    def _selection(cls, v):
        return _check(EvalSelection.parse, v)

    @field_validator("imbalance")
    @classmethod
    def _imb(cls, v):
        return _check(ImbalanceSpec.parse, v)

    @field_validator("noise", mode="before")
    @classmethod
    def _noise(cls, v):  # a mapping {kind: human, file: ..., label_set: ...} becomes its text
        if isinstance(v, dict):
            v = _check(NoiseSpec.text_of, v, result=True)
        return _check(NoiseSpec.parse, v) if isinstance(v, str) else v


class EvalCfg(Section):
    split: str = "test"
    many_threshold: int = Field(100, ge=0)   # classes with > this many training images are Many-shot
    few_threshold: int = Field(20, ge=0)     # classes with < this many are Few-shot
    allow_overlap: bool = False  # allow test samples that are also training (labeled/unlabeled) ones
    ece_bins: int = Field(15, ge=1, le=1000)  # equal-width confidence bins of the calibration error
    embedding_plot: bool = False  # report: t-SNE/UMAP map of ≤2,000 test features (~10 s on a CPU)
    # test/class_<c> MLflow metrics for up to this many classes; above it per-class accuracy is
    # in report.json only (MLflow's run search loads every metric of every run: `compare` over
    # 300 iNat-size runs would read 2.4 M of them)
    class_metrics_max: int = Field(1000, ge=0)

    @field_validator("few_threshold")
    @classmethod
    def _few_not_above_many(cls, v, info):
        many = info.data.get("many_threshold")
        if many is not None and v > many:
            raise ValueError(f"few_threshold ({v}) is above many_threshold ({many})")
        return v


class EngineCfg(Section):
    # auto: ddp when the launcher's environment says world size > 1 (torchrun, srun), else local
    backend: Literal["auto", "local", "ddp", "deepspeed"] = "auto"
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl on CUDA, gloo on CPU
    sync_bn: bool = False                     # ddp: batch-norm statistics over the global batch
    timeout_s: int = Field(600, gt=0)         # ddp: a collective waiting longer raises
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False                     # torch.compile the method's forward
    zero_stage: Literal[0, 1, 2] = 2          # deepspeed: ZeRO stage
    gradient_clipping: float = Field(0.0, ge=0)  # deepspeed: max gradient norm; 0 = off


class TrackingCfg(Section):
    uri: str | None = None        # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in cwd
    experiment: str = "ltscale"


class ReferenceCell(Section):
    """One figure a paper reports for this experiment."""
    where: dict[str, Any] = {}   # the sweep point it belongs to (dotted key → value); {}: any
    model: str                   # the report's model name, e.g. "simsiam + la_sl", "scratch + ce"
    metric: Literal["top1", "top5", "many", "medium", "few", "frequent", "rare",
                    "balanced_acc"] = "top1"
    value: float = Field(ge=0, le=100)  # in percent, as printed in the paper


class ReferenceCfg(Section):
    """Where the expected figures come from, so `ltscale compare` can set ours beside them."""
    paper: str = Field(min_length=1)   # e.g. "000 Karthik et al. 2021" (see ../shared/papers)
    table: str = Field(min_length=1)   # e.g. "Table 1", "Figure 3"
    note: str | None = None            # how the setting differs from the paper's, if it does
    cells: list[ReferenceCell] = Field(min_length=1)


class Recipe(Section):
    name: str = "quickstart"
    seed: int = Field(0, ge=0, lt=2**32)
    # `ltscale run` repeats the training stages for each seed (the manifest keeps manifest.seed)
    # and reports mean ± std; None: just `seed`. At most SEEDS_MAX, each once
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(None, min_length=1,
                                                                      max_length=SEEDS_MAX)
    output_dir: str = "runs/quickstart"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: EngineCfg = EngineCfg()
    threads: int | None = Field(None, gt=0)
    data: DataCfg = DataCfg()
    manifest: ManifestCfg = ManifestCfg()
    pretrain: PretrainCfg = PretrainCfg()
    finetune: FinetuneCfg = FinetuneCfg()
    baselines: BaselinesCfg = BaselinesCfg()
    selftrain: SelfTrainCfg = SelfTrainCfg()
    eval: EvalCfg = EvalCfg()
    tracking: TrackingCfg = TrackingCfg()
    # a grid of runs: dotted recipe key → the values it takes (`ltscale run` runs every point,
    # `ltscale submit` sends them as a job array); each point is validated as a recipe of its own
    sweep: dict[str, list[Any]] = {}
    reference: ReferenceCfg | None = None  # the paper's figures for this experiment

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        repeated = sorted(s for s, n in Counter(v or []).items() if n > 1)
        if repeated:  # the same seed is the same run: it would count twice in mean ± std
            raise ValueError(f"seed {', '.join(map(str, repeated))} is given more than once; "
                             "each seed is one run, so a repeat would be counted twice")
        return v

    @field_validator("sweep")
    @classmethod
    def _grid(cls, v):
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.{key} has no values")
            if key.split(".")[0] in ("sweep", "reference", "output_dir"):
                raise ValueError(f"sweep.{key}: this key cannot be swept")
        return v

    @model_validator(mode="after")
    def _cells_on_the_grid(self):
        for i, cell in enumerate(self.reference.cells if self.reference else []):
            for key, value in cell.where.items():
                if key not in self.sweep:
                    raise ValueError(f"reference.cells.{i}.where: {key} is not a sweep key "
                                     f"(sweep keys: {', '.join(self.sweep) or 'none'})")
                if value not in self.sweep[key]:
                    raise ValueError(f"reference.cells.{i}.where: {key}={value!r} is not one "
                                     f"of the sweep's values {self.sweep[key]}")
        return self

    @model_validator(mode="after")
    def _head_needs_a_projector(self):
        method = self.pretrain.final_method
        if self.finetune.mode in ("proj_head", "last_fc") and not hasattr(method, "proj_dim"):
            raise ValueError(f"finetune.mode {self.finetune.mode} starts from the pretrained "
                             f"projector, but method {method.name} has none; use "
                             "finetune.mode linear")
        return self
