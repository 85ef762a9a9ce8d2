"""TokLIP as a LLaVA vision tower: ``--vision_tower toklip-l`` in LLaVA's own scripts.

LLaVA (haotian-liu, ``llava-torch`` 1.2.2) builds its tower with
``build_vision_tower(cfg, delay_load=...)``; after ``toklip-patch llava`` that function asks
the ``llava.vision_towers`` entry points first, and ours (``toklip``) answers every name that
is ``toklip`` or starts with ``toklip-`` / ``toklip:``:

==============================  ===========================================================
``toklip-s``, ``toklip-l``      a named config with its released weights (``TokLIP_S_256.pt``,
                                ``TokLIP_L_384.pt``), looked up in ``$TOKLIP_HOME`` (default
                                ``~/.cache/toklip``), then the Hugging Face cache / Hub
``toklip-NAME:/path/file.pt``   a named config with the weights in that file (released layout,
                                or one of our ``.safetensors``)
``toklip:/path/dir``            a directory written by ``TokLIP.save_pretrained``
``toklip:hf-hub:ORG/NAME``      a Hugging Face Hub repo holding one (``@REVISION`` pins a branch,
                                tag or commit), through the Hugging Face cache
``toklip-NAME:hf-hub:ORG/N/F``  a named config with the weights in file F of a Hub repo
``toklip-tiny``                 a config without released weights: fixed-seed random weights
                                (tests, demos), with a warning
==============================  ===========================================================

The name is the only identity LLaVA keeps (``mm_vision_tower`` in the checkpoint's
``config.json``), so a trained LLaVA re-opens with the same tower from that name.

Features (``[B, N, mm_hidden_size]``, in the dtype of the input images):

- ``mm_vision_select_feature``: ``patch`` (LLaVA's default) gives TokLIP's semantic tokens;
  ``semantic_vq`` concatenates them with the VQ code embeddings the tokens come from (the
  l2-normalised codebook vectors, ``codebook_embed_dim`` more channels: the paper's fusion).
- ``mm_vision_select_layer``: ``-1`` (LLaVA's default) gives the final, LayerNorm-ed semantic
  tokens (what TokLIP's contrastive head reads); other values index the encoder's hidden
  states ``[embeddings, block 1, ..., block depth]`` without the final norm, as LLaVA does with
  CLIP's ``hidden_states`` (so ``-2`` is the second-to-last block).

What LLaVA touches and how this tower honours it: a delay-loaded tower (``from_pretrained``
on the meta device) creates no parameters; ``load_model`` builds, loads and freezes it
(``unfreeze_mm_vision_tower`` keeps the token encoder trainable; the VQ stays frozen);
``mm_vision_keep_decoder`` (set by the unified model's config) keeps the VQ decoder;
``image_processor`` is a ``CLIPImageProcessor`` at TokLIP's resolution with mean/std 0.5
(pixels in [-1, 1], LlamaGen VQ's input), so ``image_aspect_ratio=pad`` and ``anyres`` work;
under DeepSpeed ZeRO-3 the forward gathers the tower's partitioned parameters, because
TokLIP reads some of them (codebook, position embedding) outside a submodule call.

The plain VQ-16 tower (entry point ``vq-16``, the paper's Table 1 "VQGAN" baseline rows) gives the
l2-normalised VQ code embeddings ``[B, N, 8]`` of the same frozen LlamaGen VQ-16, without the
token encoder:

==============================  ===========================================================
``vq-16``, ``vq-16-384``        256 px (or the size named, a multiple of 16) with the VQ
                                inside the released TokLIPs (LlamaGen's ``vq_ds16_t2i.pt``),
                                looked up like TokLIP's weights
``vq-16[-SIZE]:/path/vq.pt``    the same with a LlamaGen VQ checkpoint from that file
==============================  ===========================================================
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import checkpoints as ckpt
from ...config import TokLIPConfig, VQConfig, list_models
from ...factory import create_model, load_toklip, resolve_config
from ...hub import is_hub_id
from ...models.toklip import TokLIP
from ...models.vq import VQModel
from ...transforms import IMAGE_MEAN, IMAGE_STD

__all__ = ["TokLIPVisionTower", "build_toklip_tower", "parse_tower_name", "SELECT_FEATURES", "PREFIX",
           "VQ16VisionTower", "VQTowerSpec", "build_vq16_tower", "parse_vq_tower_name", "VQ_PREFIX"]

logger = logging.getLogger(__name__)

PREFIX = "toklip"
SELECT_FEATURES = ("patch", "semantic_vq")
RANDOM_INIT_SEED = 0


def parse_tower_name(name: str) -> tuple[TokLIPConfig, Optional[str]]:
    """``--vision_tower`` value -> (config, weights): a file/dir path, ``"released"`` or None (random)."""
    base, sep, path = name.partition(":")
    known = ", ".join(list_models())
    usage = (f"known names: {known}; or NAME:/path/to/weights.pt (.safetensors), "
             f"or {PREFIX}:/path/to/saved_toklip_dir, or {PREFIX}:hf-hub:ORG/NAME[@REVISION]")
    if base == PREFIX and sep:
        if Path(path).suffix in (".pt", ".pth", ".bin", ".safetensors"):
            raise ValueError(f"{name!r}: a weight file does not say which config it fits; "
                             f"name the config, e.g. toklip-l:{path}")
        return resolve_config(path), path if Path(path).is_dir() or is_hub_id(path) else None
    if base not in list_models():
        raise ValueError(f"unknown TokLIP vision tower {name!r}; {usage}")
    config = resolve_config(base)
    if sep:
        return config, path
    return config, "released" if "checkpoint" in config.weights else None


def _device_from_map(device_map: Any) -> str:
    """The device LLaVA's ``device_map`` argument ('auto', 'cuda:0', 'cpu', {'': dev} or None) names."""
    if isinstance(device_map, dict):
        device_map = device_map.get("", "auto")
    if device_map in (None, "auto"):
        return "cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu"
    return str(device_map)


def _load_weights(name: str, config: TokLIPConfig, weights: Optional[str]) -> TokLIP:
    if weights is None:
        logger.warning("%s: config %r names no released weights; using random weights (seed %d). "
                       "Pass trained ones as %s:/path/to/weights.pt", name, config.name, RANDOM_INIT_SEED, config.name)
        return create_model(config, seed=RANDOM_INIT_SEED)
    if Path(weights).is_dir():
        return load_toklip(weights)
    # resolve the file before building the model, so a missing file fails fast and says where it looked
    path = ckpt.resolve_weight_file(config.weights["checkpoint"] if weights == "released" else weights)
    return load_toklip(config, checkpoint=path)


def _drop_unused_parts(model: TokLIP, keep_decoder: bool = False) -> TokLIP:
    """A tower tokenizes and encodes: the text tower is dead weight, and so is the VQ decoder unless
    the model also writes images (the unified model decodes its codes through the tower's VQ)."""
    model.text = None
    if not keep_decoder:
        model.vq.decoder = None
        model.vq.post_quant_conv = None
    return model


def _image_processor(size: int):
    """LLaVA's image processor for a VQ-16 input: ``size`` px square, pixels in [-1, 1]."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), resample=3,  # PIL bicubic
    )


def _zero3_gathered(module: nn.Module):
    """Gather ZeRO-3 partitioned parameters for reading (a no-op without DeepSpeed ZeRO-3)."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


class _TowerSurface(nn.Module):
    """The members of LLaVA's ``CLIPVisionTower`` that follow from a tower's ``_features``,
    ``config`` (``grid_size``, ``num_tokens``), ``hidden_size``, ``dtype`` and ``device``."""

    def _encode(self, images: Union[torch.Tensor, list[torch.Tensor]]):
        if isinstance(images, list):
            return [self._features(image.unsqueeze(0)) for image in images]
        return self._features(images)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def num_patches_per_side(self) -> int:
        return self.config.grid_size

    @property
    def num_patches(self) -> int:
        return self.config.num_tokens


class TokLIPVisionTower(_TowerSurface):
    """LLaVA's vision-tower interface (``CLIPVisionTower``'s members) over a TokLIP model."""

    def __init__(self, vision_tower: str, args: Any, delay_load: bool = False):
        super().__init__()
        self.vision_tower_name = vision_tower
        self.toklip_config, self._weights = parse_tower_name(vision_tower)
        self.select_layer = int(getattr(args, "mm_vision_select_layer", -1))
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"mm_vision_select_feature {self.select_feature!r} is not supported by TokLIP "
                             f"(no class token); choose one of {', '.join(SELECT_FEATURES)}")
        self.unfreeze = bool(getattr(args, "unfreeze_mm_vision_tower", False))
        self.keep_decoder = bool(getattr(args, "mm_vision_keep_decoder", False))
        self.image_processor = self._make_image_processor()
        self.is_loaded = False
        if not delay_load or self.unfreeze:
            self.load_model()

    def _make_image_processor(self):
        return _image_processor(self.toklip_config.image_size)

    def load_model(self, device_map: Any = None) -> None:
        """Build and load the TokLIP model, then freeze it (LLaVA never freezes the tower itself)."""
        if self.is_loaded:
            return
        model = _load_weights(self.vision_tower_name, self.toklip_config, self._weights)
        model = _drop_unused_parts(model, keep_decoder=self.keep_decoder)
        model.requires_grad_(False)
        if self.unfreeze:
            model.encoder.requires_grad_(True)
        self.toklip = model.to(_device_from_map(device_map))
        self.is_loaded = True

    @property
    def _layer(self) -> Optional[int]:
        return None if self.select_layer == -1 else self.select_layer

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        codes = self.toklip.tokenize(images.to(device=self.device, dtype=self.dtype))
        features = self.toklip.encode_codes(codes, layer=self._layer, check_range=False)  # the VQ's codes: in range
        if self.select_feature == "semantic_vq":
            code_vectors = F.embedding(codes, self.toklip.vq.quantize.codebook())
            features = torch.cat([features, code_vectors.to(features.dtype)], dim=-1)
        return features.to(images.dtype)

    def forward(self, images: Union[torch.Tensor, list[torch.Tensor]]):
        """``[B, 3, S, S]`` in [-1, 1] -> ``[B, N, hidden_size]``; a list gives a list of ``[1, N, hidden_size]``."""
        grad = self.unfreeze and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad), _zero3_gathered(self.toklip):
            return self._encode(images)

    # the rest of CLIPVisionTower's surface ---------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.toklip.vq.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.toklip.vq.quant_conv.weight.device

    @property
    def config(self) -> TokLIPConfig:
        return self.toklip_config

    @property
    def hidden_size(self) -> int:
        extra = self.config.vq.codebook_embed_dim if self.select_feature == "semantic_vq" else 0
        return self.config.encoder.width + extra


def build_toklip_tower(vision_tower: str, args: Any, **kwargs: Any) -> TokLIPVisionTower:
    """The ``llava.vision_towers`` entry point: LLaVA calls ``f(name, args=cfg, delay_load=...)``."""
    return TokLIPVisionTower(vision_tower, args=args, **kwargs)


# the plain VQ-16 tower (Table 1 baseline rows) -------------------------------------------
VQ_PREFIX = "vq-16"
VQ_DEFAULT_IMAGE_SIZE = 256


def _released_vq_weights() -> Mapping[str, str]:
    """Where the VQ inside the released TokLIPs lives (``{"repo_id", "filename"}``), read from
    the toklip-l config so that the baseline and TokLIP share one tokenizer and one record of it."""
    return resolve_config("toklip-l").weights["vq_checkpoint"]


@dataclass(frozen=True)
class VQTowerSpec:
    """What a ``vq-16`` tower name says: the image size and where the VQ-16 weights are."""

    image_size: int
    weights: Union[str, Mapping[str, str]]  # a file, or the released file's {"repo_id", "filename"}
    vq: VQConfig = field(default_factory=VQConfig)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.vq.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2


def parse_vq_tower_name(name: str) -> VQTowerSpec:
    """``vq-16``, ``vq-16-384``, ``vq-16:/path/vq.pt`` or ``vq-16-384:/path/vq.pt`` -> the tower's spec."""
    base, sep, path = name.partition(":")
    usage = f"use {VQ_PREFIX} (256 px), {VQ_PREFIX}-SIZE (SIZE a multiple of 16), optionally followed by :/path/to/vq.pt"
    size_text = base[len(VQ_PREFIX) + 1:] if base.startswith(VQ_PREFIX + "-") else None
    if base == VQ_PREFIX:
        size = VQ_DEFAULT_IMAGE_SIZE
    elif size_text and size_text.isdigit() and int(size_text) > 0:
        size = int(size_text)
    else:
        raise ValueError(f"unknown VQ vision tower {name!r}; {usage}")
    downsample = VQConfig().downsample
    if size % downsample:
        raise ValueError(f"{name!r}: the image size {size} is not a multiple of the VQ's downsampling {downsample}; {usage}")
    if sep and not path:
        raise ValueError(f"{name!r}: nothing after ':'; {usage}")
    return VQTowerSpec(image_size=size, weights=path if sep else _released_vq_weights())


class VQ16VisionTower(_TowerSurface):
    """LLaVA's vision-tower interface over LlamaGen's frozen VQ-16: features are the
    l2-normalised code embeddings of the image's codes, ``[B, N, codebook_embed_dim]``."""

    def __init__(self, vision_tower: str, args: Any, delay_load: bool = False):
        super().__init__()
        self.vision_tower_name = vision_tower
        self.spec = parse_vq_tower_name(vision_tower)
        layer = int(getattr(args, "mm_vision_select_layer", -1))
        feature = getattr(args, "mm_vision_select_feature", "patch")
        if layer != -1 or feature != "patch":
            raise ValueError(f"the {VQ_PREFIX} tower has one output (the code embeddings): use "
                             f"mm_vision_select_layer -1 and mm_vision_select_feature patch, "
                             f"got {layer} and {feature!r}")
        if getattr(args, "unfreeze_mm_vision_tower", False):
            raise ValueError(f"the {VQ_PREFIX} tower is a frozen tokenizer; unfreeze_mm_vision_tower is not supported")
        self.image_processor = _image_processor(self.spec.image_size)
        self.is_loaded = False
        if not delay_load:
            self.load_model()

    def load_model(self, device_map: Any = None) -> None:
        """Build the VQ, load its checkpoint strictly, keep the encoder side only, freeze it."""
        if self.is_loaded:
            return
        path = ckpt.resolve_weight_file(self.spec.weights)  # before building, so a missing file fails fast
        vq = VQModel(self.spec.vq)
        ckpt.load_vq_checkpoint(vq, path)
        vq.decoder = None
        vq.post_quant_conv = None
        self.vq = vq.requires_grad_(False).eval().to(_device_from_map(device_map))
        self.is_loaded = True

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        codes = self.vq.tokenize(images.to(device=self.device, dtype=self.dtype))
        return F.embedding(codes, self.vq.quantize.codebook()).to(images.dtype)

    @torch.no_grad()
    def forward(self, images: Union[torch.Tensor, list[torch.Tensor]]):
        """``[B, 3, S, S]`` in [-1, 1] -> ``[B, N, 8]``; a list gives a list of ``[1, N, 8]``."""
        with _zero3_gathered(self.vq):
            return self._encode(images)

    @property
    def dtype(self) -> torch.dtype:
        return self.vq.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vq.quant_conv.weight.device

    @property
    def config(self) -> VQTowerSpec:
        return self.spec

    @property
    def hidden_size(self) -> int:
        return self.spec.vq.codebook_embed_dim


def build_vq16_tower(vision_tower: str, args: Any, **kwargs: Any) -> VQ16VisionTower:
    """The ``vq-16`` entry point of ``llava.vision_towers``: LLaVA calls ``f(name, args=cfg, delay_load=...)``."""
    return VQ16VisionTower(vision_tower, args=args, **kwargs)
