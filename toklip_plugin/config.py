"""TokLIP model configs: the one place where a config is parsed.

A config is data (JSON or YAML). The named configs live in the repository's top-level
``configs/models/`` folder, which is installed inside the package as
``toklip_plugin.configs`` so that names resolve from a non-editable install too.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

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
]


@dataclass(frozen=True)
class VQConfig:
    """LlamaGen VQ model hyper-parameters (``tokenizer/tokenizer_image/vq_model.py``'s ModelArgs)."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class EncoderConfig:
    """The token encoder: code mapping, causal ViT blocks, final norm, map-pool head."""

    width: int = 1152
    depth: int = 27
    heads: int = 16
    mlp_ratio: float = 3.7362
    causal: bool = True
    mapping: str = "mlp"  # "mlp" (paper default) or "codebook" (a learned table per code, ablation)

    def __post_init__(self) -> None:
        if self.mapping not in ("mlp", "codebook"):
            raise ValueError(f"encoder.mapping must be 'mlp' or 'codebook', got {self.mapping!r}")
        if self.width % self.heads:
            raise ValueError(f"encoder.width {self.width} is not divisible by encoder.heads {self.heads}")


@dataclass(frozen=True)
class TokLIPConfig:
    name: str
    image_size: int
    embed_dim: int
    vq: VQConfig
    encoder: EncoderConfig
    text: Mapping[str, Any]  # open_clip CLIPTextCfg fields, passed through unchanged
    tokenizer: Mapping[str, Any] = field(default_factory=lambda: {"kind": "open_clip_bpe"})
    weights: Mapping[str, Any] = field(default_factory=dict)  # where released weights live (Hub repo + file)
    description: str = ""
    init_logit_scale: float = 2.6592600345611572  # log(1 / 0.07)
    init_logit_bias: float = -10.0

    def __post_init__(self) -> None:
        if self.image_size % self.vq.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the VQ downsample factor "
                f"{self.vq.downsample}; pick an image size divisible by {self.vq.downsample}"
            )
        if self.encoder.width != self.embed_dim:
            raise ValueError(
                f"embed_dim {self.embed_dim} must equal encoder.width {self.encoder.width}: "
                "the map-pool head keeps the encoder width (SigLIP 'map' pooling, no projection)"
            )

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
    _reject_unknown(data, TokLIPConfig, "config")
    vq = dict(data.get("vq", {}))
    _reject_unknown(vq, VQConfig, "vq")
    if "ch_mult" in vq:
        vq["ch_mult"] = tuple(vq["ch_mult"])
    encoder = dict(data.get("encoder", {}))
    _reject_unknown(encoder, EncoderConfig, "encoder")
    missing = [k for k in ("name", "image_size", "embed_dim", "text") if k not in data]
    if missing:
        raise ValueError(f"config is missing required keys {missing}")
    return TokLIPConfig(
        **{k: v for k, v in data.items() if k not in ("vq", "encoder")},
        vq=VQConfig(**vq),
        encoder=EncoderConfig(**encoder),
    )


def _reject_unknown(data: Mapping[str, Any], cls: type, where: str) -> None:
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
