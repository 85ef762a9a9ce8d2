"""TokLIP model configs: the one place where a config is parsed.

A config is data (JSON or YAML). The named configs live in the repository's top-level
``configs/models/`` folder, which is installed inside the package as
``toklip_plugin.configs`` so that names resolve from a non-editable install too.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from .resources import data_dir

__all__ = [
    "VQConfig",
    "EncoderConfig",
    "TokLIPConfig",
    "list_models",
    "get_model_config",
    "load_config_file",
    "config_from_dict",
    "reject_unknown_keys",
    "Bounds",
    "integer",
    "number",
    "flag",
    "check_fields",
]


# typed, range-checked fields ------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """What a numeric config value may be: ``kind`` (int, float or bool), at least ``low`` (inclusive),
    above ``above`` and below ``below`` (exclusive), and whether null is allowed. Kept in a dataclass
    field's metadata (see :func:`integer`, :func:`number`, :func:`flag`)."""

    kind: type
    low: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    null: bool = False

    def describe(self) -> str:
        what = {int: "an integer", float: "a number", bool: "true or false"}[self.kind]
        if self.low is not None:
            what += f" >= {self.low:g}"
        if self.above is not None:
            what += f" > {self.above:g}"
        if self.below is not None:
            what += f" and < {self.below:g}"
        return what + (" or null" if self.null else "")

    def parse(self, key: str, value: Any) -> Any:
        """``value`` as ``kind`` (a YAML string such as "1e-5" is read as the number it spells), or
        ValueError naming ``key``, the value and what is allowed."""
        if value is None and self.null:
            return None
        parsed = _as_kind(value, self.kind)
        if parsed is None or not self._in_range(parsed):
            raise ValueError(f"{key} must be {self.describe()}; got {value!r}")
        return parsed

    def _in_range(self, value: Any) -> bool:
        if self.kind is bool:
            return True
        return (math.isfinite(value) and (self.low is None or value >= self.low)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))


def _as_kind(value: Any, kind: type) -> Any:
    """``value`` converted to ``kind`` without loss, or None. bool is never a number here (YAML's true is
    not a batch size), and a float becomes an int only when it is whole."""
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    if kind is float:
        return float(value)
    return int(value) if float(value).is_integer() else None


def integer(default: Any = MISSING, *, low: Optional[int] = None, null: bool = False) -> Any:
    """A dataclass field holding an integer of at least ``low`` (or null, if allowed)."""
    return field(default=default, metadata={"bounds": Bounds(int, low=low, null=null)})


def number(default: Any = MISSING, *, low: Optional[float] = None, above: Optional[float] = None,
           null: bool = False) -> Any:
    """A dataclass field holding a finite float of at least ``low`` / more than ``above`` (or null)."""
    return field(default=default, metadata={"bounds": Bounds(float, low=low, above=above, null=null)})


def flag(default: Any = MISSING) -> Any:
    """A dataclass field holding true or false."""
    return field(default=default, metadata={"bounds": Bounds(bool)})


def check_fields(obj: Any, prefix: str) -> None:
    """Convert and range-check every field of the dataclass ``obj`` declared with :func:`integer`,
    :func:`number` or :func:`flag`; errors name the key as ``prefix + field``. Works on frozen ones too."""
    for item in dataclasses.fields(obj):
        bounds = item.metadata.get("bounds")
        if bounds is not None:
            object.__setattr__(obj, item.name, bounds.parse(prefix + item.name, getattr(obj, item.name)))


@dataclass(frozen=True)
class VQConfig:
    """LlamaGen VQ model hyper-parameters (``tokenizer/tokenizer_image/vq_model.py``'s ModelArgs)."""

    codebook_size: int = integer(16384, low=1)
    codebook_embed_dim: int = integer(8, low=1)
    ch: int = integer(128, low=1)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = integer(256, low=1)
    num_res_blocks: int = integer(2, low=1)

    def __post_init__(self) -> None:
        check_fields(self, "vq.")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class EncoderConfig:
    """The token encoder: code mapping, ViT blocks (causal by default), final norm, pooling head.

    The defaults are SigLIP2's vision tower (the released TokLIP-S/L): no class token, ``map``
    pooling, tanh GELU, LayerNorm eps 1e-6. The paper's OpenCLIP ViT-B/16 ablation model instead
    appends a class token *last* (so that under causal attention it sees every code token) and pools
    it (``tok``), with open_clip's ``ln_pre``, exact GELU, eps 1e-5 and a bias-free projection.
    """

    width: int = integer(1152, low=1)
    depth: int = integer(27, low=1)
    heads: int = integer(16, low=1)
    mlp_ratio: float = number(3.7362, above=0)
    causal: bool = flag(True)
    mapping: str = "mlp"  # "mlp" (paper default) or "codebook" (a learned table per code, ablation)
    class_token: str = "none"  # "none" or "last" (appended after the codes, as the official ablation code does)
    pool: str = "map"  # "map" (SigLIP attention pooling over the tokens) or "tok" (the class token's output)
    norm_pre: bool = flag(False)  # LayerNorm before the blocks (open_clip's ln_pre)
    proj: bool = flag(False)  # bias-free projection width -> embed_dim after pooling (open_clip's proj)
    act: str = "gelu_tanh"  # block MLP activation: "gelu_tanh" (SigLIP) or "gelu" (exact; OpenCLIP ViT-B/16)
    norm_eps: float = number(1e-6, above=0)  # LayerNorm eps: 1e-6 (SigLIP), 1e-5 (open_clip)

    def __post_init__(self) -> None:
        check_fields(self, "encoder.")
        _check_choice("encoder.mapping", self.mapping, ("mlp", "codebook"))
        _check_choice("encoder.class_token", self.class_token, ("none", "last"))
        _check_choice("encoder.pool", self.pool, ("map", "tok"))
        _check_choice("encoder.act", self.act, ("gelu_tanh", "gelu"))
        if self.width % self.heads:
            raise ValueError(f"encoder.width {self.width} is not divisible by encoder.heads {self.heads}")
        if (self.pool == "tok") != (self.class_token == "last"):
            raise ValueError("encoder.pool 'tok' reads the class token and a class token is only read by 'tok' "
                             "pooling: use pool: tok with class_token: last, or pool: map with class_token: none")

    @property
    def has_class_token(self) -> bool:
        return self.class_token != "none"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


@dataclass(frozen=True)
class TokLIPConfig:
    name: str
    image_size: int = integer(low=1)
    embed_dim: int = integer(low=1)
    vq: VQConfig
    encoder: EncoderConfig
    text: Mapping[str, Any]  # open_clip CLIPTextCfg fields, passed through unchanged
    tokenizer: Mapping[str, Any] = field(default_factory=lambda: {"kind": "open_clip_bpe"})
    weights: Mapping[str, Any] = field(default_factory=dict)  # where released weights live (Hub repo + file)
    description: str = ""
    init_logit_scale: float = number(2.6592600345611572)  # log(1 / 0.07)
    # None: no logit_bias, the model of the paper's InfoNCE objective (the official trainer's --siglip-train
    # removes it); a number (SigLIP uses -10): a learned bias, for training with the sigmoid loss
    init_logit_bias: Optional[float] = number(None, null=True)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if self.image_size % self.vq.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the VQ downsample factor "
                f"{self.vq.downsample}; pick an image size divisible by {self.vq.downsample}"
            )
        if not self.encoder.proj and self.encoder.width != self.embed_dim:
            raise ValueError(
                f"embed_dim {self.embed_dim} must equal encoder.width {self.encoder.width}: without "
                "encoder.proj the pooled embedding keeps the encoder width (SigLIP 'map' pooling)"
            )

    @property
    def has_logit_bias(self) -> bool:
        return self.init_logit_bias is not None

    @property
    def grid_size(self) -> int:
        return self.image_size // self.vq.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["vq"]["ch_mult"] = list(self.vq.ch_mult)
        out["text"] = dict(self.text)
        out["tokenizer"] = dict(self.tokenizer)
        out["weights"] = dict(self.weights)
        return out

    def replace(self, **changes: Any) -> "TokLIPConfig":
        return dataclasses.replace(self, **changes)


def config_from_dict(data: Mapping[str, Any]) -> TokLIPConfig:
    """Build a config from parsed JSON/YAML, rejecting unknown keys by name."""
    data = dict(data)
    reject_unknown_keys(data, TokLIPConfig, "config")
    vq = dict(data.get("vq", {}))
    reject_unknown_keys(vq, VQConfig, "vq")
    if "ch_mult" in vq:
        vq["ch_mult"] = tuple(vq["ch_mult"])
    encoder = dict(data.get("encoder", {}))
    reject_unknown_keys(encoder, EncoderConfig, "encoder")
    missing = [k for k in ("name", "image_size", "embed_dim", "text") if k not in data]
    if missing:
        raise ValueError(f"config is missing required keys {missing}")
    return TokLIPConfig(
        **{k: v for k, v in data.items() if k not in ("vq", "encoder")},
        vq=VQConfig(**vq),
        encoder=EncoderConfig(**encoder),
    )


def reject_unknown_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    """Raise naming the keys of ``data`` that are not fields of the dataclass ``cls`` (``where``: for the message)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")


def _model_config_dir():
    return data_dir("configs") / "models"


def list_models() -> list[str]:
    """Names of the built-in TokLIP configs."""
    return sorted(p.name[: -len(".json")] for p in _model_config_dir().iterdir() if p.name.endswith(".json"))


def get_model_config(name: str) -> TokLIPConfig:
    """The built-in config called ``name`` (see :func:`list_models`)."""
    entry = _model_config_dir() / f"{name}.json"
    if not entry.is_file():
        raise KeyError(f"unknown TokLIP model {name!r}; known models: {', '.join(list_models())}")
    return config_from_dict(json.loads(entry.read_text()))


def load_config_file(path: str | Path) -> TokLIPConfig:
    """A config from a ``.json``/``.yaml``/``.yml`` file."""
    path = Path(path)
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} does not hold a config mapping")
    return config_from_dict(data)
