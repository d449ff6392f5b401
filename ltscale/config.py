"""Typed recipe schema, YAML loading, dotted overrides and validation.

Every section forbids unknown keys, so a typo fails before any work with the dotted key and what
was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ltscale.config_base import Section
from ltscale.config_pretrain import PretrainCfg
from ltscale.config_supervised import BaselinesCfg, FinetuneCfg, SelfTrainCfg
from ltscale.data.manifest_spec import EvalSelection, ImbalanceSpec, NoiseSpec
from ltscale.errors import LtscaleError, RecipeError
from ltscale.safe_yaml import MAX_RECIPE_BYTES, safe_load_limited


class SourceCfg(Section):
    kind: str = "idx"        # any `ltscale data build` KIND
    path: str = "/usr/share/datasets/fashion-mnist"
    options: dict[str, str] = {}  # source options, as `--option NAME=VALUE`


class LoaderCfg(Section):
    # torch: DataLoader workers; dali: needs `pip install nvidia-dali-cuda130`; stream: webdataset
    # pipeline for shards that can only be streamed (see ltscale/data/loading/stream_loader.py)
    backend: Literal["torch", "dali", "stream"] = "torch"
    urls: str | None = None                    # stream: URL template with {shard}
    shuffle_buffer: int = Field(5000, gt=0)    # stream: shuffle buffer (samples)
    prefetch: int = Field(4, gt=0)             # batches queued ahead per worker
    pin_memory: bool | None = None             # None: when training on CUDA
    on_error: Literal["fail", "skip"] = "fail"  # a corrupt/truncated sample: stop, or skip + report
    check: Literal["size", "checksum", "none"] = "size"  # shard check before training
    shuffle: Literal["global", "block"] = "global"  # block: shard-local blocks (page-cache friendly)
    block_size: int = Field(64, gt=0)          # samples per on-disk block (block shuffle)
    window: int = Field(16, gt=0)              # blocks mixed together (block shuffle)


class DataCfg(Section):
    source: SourceCfg = SourceCfg()
    loader: LoaderCfg = LoaderCfg()
    shards: str = "runs/data/fashion-mnist"   # built from `source` when absent
    shard_bytes: int = Field(1 << 30, gt=0)
    image_size: int = Field(28, gt=0)
    channels: Literal[1, 3] = 1
    mean: list[float] = [0.286]
    std: list[float] = [0.353]
    eval_crop_fraction: float | None = Field(None, gt=0, le=1)  # None: 0.875 from 96 px, else 1


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
    # and reports mean ± std; None: just `seed`
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] | None = Field(None, min_length=1)
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


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) or len(str(value)) < 4 * limit \
        else f"{type(value).__name__} of {len(value)} items"
    return text if len(text) <= limit else text[:limit] + "…"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"recipe {source} is invalid:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see recipes/quickstart.yaml "
                         "for the keys a recipe takes)")
        else:
            got = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            if isinstance(got, dict):  # a whole section: its message says what is wrong
                lines.append(f"  {key or 'recipe'}: {msg}")
            else:
                lines.append(f"  {key}: {msg} (got {_short(got)})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    try:  # values are data: safe_load refuses tags such as !!python/object
        return key.strip().split("."), safe_load_limited(value)
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: {key.strip()} is not a valid YAML value "
                          f"({' '.join(str(exc).split())})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        if path.is_dir():
            raise RecipeError(f"recipe {path} is a folder; pass a recipe file (e.g. "
                              "recipes/quickstart.yaml)")
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path} is {size} bytes; a recipe is at most "
                              f"{MAX_RECIPE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
        raw = safe_load_limited(text)
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise RecipeError(f"recipe {path} is not valid YAML: {detail}") from None
    if raw is None:
        raise RecipeError(f"recipe {path} is empty; start from recipes/quickstart.yaml (an empty "
                          "recipe would silently run every default)")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    return recipe_from_dict(apply_overrides(raw, overrides or []), str(path))


def recipe_from_dict(raw: dict, source: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, source)) from None
    except LtscaleError as exc:
        raise RecipeError(f"recipe {source} is invalid: {exc}") from None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
