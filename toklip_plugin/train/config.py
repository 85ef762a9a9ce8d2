"""Training configs: the one place where a ``configs/train/*.yaml`` file is parsed.

A train config is YAML data with five sections (``model``, ``teacher``, ``data``, ``loss``,
``optim``) plus ``run``. A file may start from another with ``base: NAME`` (a named train
config or a path); command-line overrides are ``section.key=value`` with YAML values. Unknown
keys are errors that list the known ones, so a typo never trains the wrong recipe silently.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from ..config import Bounds, TokLIPConfig, check_fields, config_from_dict, flag, integer, number, reject_unknown_keys
from ..factory import resolve_config
from ..io import atomic_path
from ..models.teacher import TeacherConfig
from ..resources import data_dir

__all__ = [
    "ModelSection", "DataSection", "LossSection", "OptimSection", "RunSection",
    "TrainConfig", "list_train_configs", "load_train_config", "train_config_from_dict",
]


@dataclass
class ModelSection:
    name: str = "toklip-tiny"  # a TokLIP model name, saved directory or config file
    overrides: dict = field(default_factory=dict)  # merged into the model config, e.g. {encoder: {causal: false}}
    init: Optional[str] = "teacher"  # token encoder: "teacher" (its SigLIP2 or open_clip ViT), a state-dict file, or null
    text_init: Optional[str] = "teacher"  # text tower + logit scale/bias: "teacher", a state-dict file, or null
    vq_checkpoint: Optional[str] = None  # LlamaGen VQ weights, a path or "released"


@dataclass
class DataSection:
    kind: str = "wds"  # "wds" (webdataset shards), "csv", "jsonl" (image path + caption), "cache" (codes file)
    train: str = ""  # shard glob / brace list, CSV/JSONL file, or cache file
    image_key: str = "image"  # CSV/JSONL column holding the image path
    caption_key: str = "caption"  # CSV/JSONL column or json-field holding the caption
    shuffle_buffer: int = integer(1000, low=0)  # samples held for shuffling (0: read in order)
    workers: int = integer(0, low=0)  # data-loader processes per rank (0: in the training process)
    # samples in one epoch (open_clip's --train-num-samples), for optim.epochs
    num_samples: Optional[int] = integer(None, low=1, null=True)
    augment: bool = flag(True)  # images: the official random-resized-crop training transform; false: the eval one
    # skip images whose width or height is below this many pixels (null: keep all)
    min_size: Optional[int] = integer(None, low=1, null=True)

    def __post_init__(self) -> None:
        check_fields(self, "data.")
        if self.kind not in ("wds", "csv", "jsonl", "cache"):
            raise ValueError(f"data.kind must be one of wds, csv, jsonl, cache; got {self.kind!r}")

    def keeps_image(self, width: int, height: int) -> bool:
        """Whether a decoded image of this size passes ``min_size`` (the paper filters low-resolution images;
        the official filter keeps an image when both sides are at least the threshold, 300 there)."""
        return self.min_size is None or min(width, height) >= self.min_size


@dataclass
class LossSection:
    """The paper's objective by default: InfoNCE + 1000 x MSE of the l2-normalised pooled embeddings."""

    contrastive: str = "infonce"  # "infonce" (CLIP softmax, the paper), "sigmoid" (SigLIP; needs a logit_bias), "none"
    contrastive_weight: float = number(1.0, low=0)
    distill_weight: float = number(1000.0, low=0)  # x MSE of the l2-normalised pooled embedding to the teacher's
    token_distill_weight: float = number(0.0, low=0)  # x MSE of every semantic token to the teacher's at its position
    token_distill_normalize: bool = flag(True)  # l2-normalise each token first; false: raw (official DistillClipLoss)
    sigmoid_dist_impl: str = "gather"  # open_clip SigLipLoss exchange: gather, bidir, shift, reduce

    def __post_init__(self) -> None:
        check_fields(self, "loss.")
        if self.contrastive not in ("sigmoid", "infonce", "none"):
            raise ValueError(f"loss.contrastive must be sigmoid, infonce or none; got {self.contrastive!r}")


@dataclass
class OptimSection:
    lr: float = number(1e-5, above=0)  # YAML 1.1 reads 1e-5 (no dot) as a string: read as the number it spells
    weight_decay: float = number(0.1, low=0)
    betas: tuple = (0.9, 0.98)  # each in [0, 1)
    eps: float = number(1e-6, above=0)
    warmup_steps: int = integer(500, low=0)  # linear warmup steps (0: none)
    # optimizer steps to train; or give epochs (with data.num_samples) instead
    steps: Optional[int] = integer(None, low=1, null=True)
    epochs: Optional[int] = integer(None, low=1, null=True)  # passes over data.num_samples, as open_clip_train counts
    batch_size: int = integer(512, low=1)  # global batch, summed over ranks and accumulation steps
    accum_steps: int = integer(1, low=1)  # micro-batches per optimizer step; must divide batch_size
    grad_clip: Optional[float] = number(1.0, low=0, null=True)  # global gradient-norm bound (0 or null: none)
    decay_pos_embed: bool = flag(False)  # weight decay on the position embedding too (the official trainer does)

    def __post_init__(self) -> None:
        check_fields(self, "optim.")
        self.betas = _betas(self.betas)
        if self.batch_size % self.accum_steps:
            raise ValueError(f"optim.batch_size {self.batch_size} is not divisible by optim.accum_steps "
                             f"{self.accum_steps}")
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"optim.steps ({self.steps}) and optim.epochs ({self.epochs}) both set the length of the "
                             "run; keep one (e.g. optim.epochs=null optim.steps=100 for a short run)")

    def total_steps(self, num_samples: Optional[int]) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` x ceil(``num_samples`` / ``batch_size``), the
        steps per epoch open_clip_train counts (its further rounding to whole batches per data worker aside)."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise ValueError("the run has no length: set optim.steps, or optim.epochs with data.num_samples")
        if not num_samples:
            raise ValueError(f"optim.epochs ({self.epochs}) needs data.num_samples, the samples in one epoch "
                             "(open_clip's --train-num-samples)")
        return self.epochs * -(-num_samples // self.batch_size)  # ceil division


def _betas(value: Any) -> tuple[float, float]:
    """AdamW's (beta1, beta2): two numbers in [0, 1)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.98]; got {value!r}")
    beta = Bounds(float, low=0, below=1)
    return beta.parse("optim.betas[0]", value[0]), beta.parse("optim.betas[1]", value[1])


@dataclass
class RunSection:
    output_dir: str = "runs/toklip"
    precision: str = "bf16"  # "fp32", "bf16" or "fp16" (autocast; fp16 adds a GradScaler)
    grad_checkpointing: bool = flag(False)
    distributed: str = "ddp"  # "ddp" or "fsdp" (sharded parameters, for the So400m configs)
    save_every: int = integer(1000, low=1)  # checkpoint every N steps (and at the last)
    keep_last: int = integer(3, low=0)  # checkpoints kept (0: all)
    log_every: int = integer(10, low=1)  # metrics.jsonl line every N steps (and at the last)
    eval_every: int = integer(0, low=0)  # zero-shot evaluation every N steps on rank 0 (0: off); needs eval_data
    eval_data: Optional[str] = None  # a cache file of held-out samples with class labels
    seed: int = integer(0)
    # where metrics go besides metrics.jsonl (rank 0): any of REPORTERS, e.g. [tensorboard, wandb]; [] or none: nowhere
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    name: Optional[str] = None  # the run's name in logs and in W&B (default: the output directory's name)
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    # a Hugging Face Hub repo (ORG/NAME) that rank 0 uploads the exported model (with its model card) to at the end
    push_to_hub: Optional[str] = None
    # frozen text-tower outputs kept per distinct caption (LRU); 0: off
    text_cache_size: int = integer(65536, low=0)
    # non-finite loss / gradient steps in a row (each skipped) before the run stops
    max_nonfinite_steps: int = integer(10, low=1)
    # how long a rank waits in a collective before the process group fails it (torch's default: 30 min for gloo,
    # 10 min for NCCL). Must exceed the evaluation time when eval_every is set: the other ranks wait in the next
    # collective while rank 0 evaluates
    collective_timeout_s: float = number(1800.0, above=0)

    def __post_init__(self) -> None:
        check_fields(self, "run.")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"run.precision must be fp32, bf16 or fp16; got {self.precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"run.distributed must be ddp or fsdp; got {self.distributed!r}")
        self.report_to = _reporters(self.report_to)
        if self.name is not None and not str(self.name).strip():
            raise ValueError(f"run.name must be a non-empty name (or null: the output directory's); got {self.name!r}")
        self.name = None if self.name is None else str(self.name)

    @property
    def run_name(self) -> str:
        """``name``, or the output directory's name."""
        return self.name or Path(self.output_dir).resolve().name


REPORTERS = ("tensorboard", "wandb")
# keys a config may no longer hold, with what replaced them
_REPLACED_KEYS = {"run.tensorboard": "run.report_to: [tensorboard]", "run.wandb": "run.report_to: [wandb]"}


def _reporters(value: Any) -> list[str]:
    """``run.report_to`` as a list of distinct reporters, from a list, one name, or none ("none", [] or null)."""
    if value is None or value == "none":
        return []
    items = [value] if isinstance(value, str) else value
    valid = f"{', '.join(REPORTERS)} (or none / [] for neither)"
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"run.report_to must be a list of reporters, of {valid}; got {value!r}")
    unknown = [item for item in items if item not in REPORTERS]
    if unknown:
        raise ValueError(f"run.report_to: unknown reporter(s) {unknown}; valid: {valid}")
    return list(dict.fromkeys(items))


def _refuse_replaced_keys(section: str, values: Mapping[str, Any]) -> None:
    for key in values:
        replacement = _REPLACED_KEYS.get(f"{section}.{key}")
        if replacement:
            raise ValueError(f"{section}.{key} was replaced by {replacement} (a list of {', '.join(REPORTERS)}; "
                             "[] for none)")


_SECTIONS = {"model": ModelSection, "teacher": TeacherConfig, "data": DataSection,
             "loss": LossSection, "optim": OptimSection, "run": RunSection}


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def model_config(self) -> TokLIPConfig:
        """The student's TokLIP config with ``model.overrides`` merged in."""
        base = resolve_config(self.model.name).to_dict()
        return config_from_dict(_merge(base, self.model.overrides))

    @property
    def uses_teacher(self) -> bool:
        return (self.loss.distill_weight > 0 or self.loss.token_distill_weight > 0
                or "teacher" in (self.model.init, self.model.text_init))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown train-config section(s) {unknown}; known: {sorted(_SECTIONS)}")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = dict(data.get(name) or {})
        _refuse_replaced_keys(name, values)
        reject_unknown_keys(values, cls, f"train-config section {name!r}")
        sections[name] = cls(**values)
    config = TrainConfig(**sections)
    try:  # the model name and overrides are checked now, not at the first step
        config.model_config()
    except ValueError as err:
        raise ValueError(f"model.name {config.model.name!r} with model.overrides: {err}") from err
    return config


def list_train_configs() -> list[str]:
    folder = data_dir("configs") / "train"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_train_config(source: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A train config from a file or a name in ``configs/train``, with ``section.key=value`` overrides."""
    data = _read_with_bases(source, seen=())
    for item in overrides:
        data = _merge(data, _parse_override(item))
    return train_config_from_dict(data)


def _read_with_bases(source: str | Path, seen: tuple) -> dict:
    path = _find_config(source)
    if str(path) in seen:
        raise ValueError(f"train config {path} includes itself through 'base'")
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} does not hold a train-config mapping")
    data = dict(data)
    base = data.pop("base", None)
    return _merge(_read_with_bases(base, seen + (str(path),)), data) if base else data


def _find_config(source: str | Path):
    path = Path(source)
    if path.is_file():
        return path
    named = data_dir("configs") / "train" / f"{source}.yaml"
    if named.is_file():
        return named
    raise FileNotFoundError(f"train config {source!r} is neither a file nor a named config "
                            f"({', '.join(list_train_configs())})")


def _parse_override(item: str) -> dict:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=1e-4)")
    nested: Any = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Recursive dict merge; ``update`` wins, mappings merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
