"""The frozen teacher: an image tower plus an open_clip text tower, in open_clip's key layout.

Two image towers, one interface (:class:`Teacher`: ``image_features``, ``encode_image``,
``encode_text``, ``image_size``, ``resize``):

- :class:`SigLIPTeacher`, a timm ViT trunk with map pooling (``visual.trunk.*``, ``text.*``,
  ``logit_scale``, ``logit_bias``), which ``checkpoints.init_from_siglip2`` reads. Real runs take
  SigLIP2 from open_clip; tests and the demo build a small trunk from ``timm_kwargs`` (and the
  demo trains it first).
- :class:`OpenCLIPViTTeacher`, open_clip's own ``VisionTransformer`` (class token first, ``tok``
  pooling; e.g. ``ViT-B-16``, the paper's ablation teacher): ``visual.conv1``,
  ``visual.transformer.resblocks.*``, ..., ``text.*``, ``logit_scale``, which
  ``checkpoints.init_from_open_clip`` reads.

The state dict of either initialises a TokLIP student directly. Training distils towards the
teacher and evaluation measures against it, so both take its token grid through the one
:func:`resample_token_grid`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer as OpenCLIPVisionTransformer
from timm.models.vision_transformer import VisionTransformer

from ..checkpoints import load_state_dict_strict, safe_load, unwrap_state_dict
from ..config import TokLIPConfig
from .text import build_text_tower

__all__ = ["TeacherConfig", "Teacher", "SigLIPTeacher", "OpenCLIPViTTeacher", "build_teacher", "build_small_teacher",
           "resample_token_grid", "SIGLIP_TRUNK_DEFAULTS"]

# a SigLIP teacher always has a logit bias (it is trained with the sigmoid loss); SigLIP initialises it to -10
SIGLIP_INIT_LOGIT_BIAS = -10.0
# timm kwargs shared by every SigLIP-style trunk: no class token, map pooling, no classifier.
SIGLIP_TRUNK_DEFAULTS: dict[str, Any] = {
    "patch_size": 16, "class_token": False, "global_pool": "map", "num_classes": 0, "act_layer": "gelu_tanh",
}


@dataclass
class TeacherConfig:
    """Which teacher to build: an open_clip model (SigLIP or native ViT), or a custom timm trunk (tests, demo)."""

    open_clip: Optional[str] = None  # an open_clip model name, e.g. ViT-SO400M-16-SigLIP2-256 or ViT-B-16
    pretrained: Optional[str] = None  # open_clip pretrained tag or file
    timm_kwargs: dict = field(default_factory=dict)  # a custom timm ViT trunk (tests, demo) instead of open_clip
    checkpoint: Optional[str] = None  # open_clip-layout weights for the custom trunk + text tower


class Teacher(nn.Module):
    """A frozen image tower ``visual`` and text tower ``text`` with their logit scale (and bias, when trained
    with the sigmoid loss). Subclasses say how the image tower gives its pooled embedding and tokens."""

    def __init__(self, visual: nn.Module, text: nn.Module, logit_scale: float, logit_bias: Optional[float]):
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.logit_bias = None if logit_bias is None else nn.Parameter(torch.tensor(float(logit_bias)))

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at any resolution -> (pooled embedding ``[B, E]``, tokens ``[B, M, C]``)."""
        raise NotImplementedError

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Student-resolution images -> the teacher's resolution (bicubic, antialiased).

        The official TokLIP code resizes bilinearly without antialiasing. We keep bicubic with
        antialiasing: it is how open_clip's and SigLIP's own preprocessing resizes, so the teacher
        sees images like the ones it was trained on (and a downsample does not alias).
        """
        if images.shape[-1] == self.image_size:
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                             align_corners=False, antialias=True)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled = self.image_features(images)[0]
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, text_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text_ids)
        return F.normalize(features, dim=-1) if normalize else features


class SigLIPTeacher(Teacher):
    """A timm ViT trunk with map pooling and no projection (SigLIP / SigLIP2): tokens are its
    ``forward_features`` (after the final norm), ``[B, M, E]``."""

    def __init__(self, trunk: VisionTransformer, text: nn.Module, logit_scale: float, logit_bias: float):
        super().__init__(nn.ModuleDict({"trunk": trunk}), text, logit_scale, logit_bias)

    @property
    def trunk(self) -> VisionTransformer:
        return self.visual["trunk"]

    @property
    def image_size(self) -> int:
        return self.trunk.patch_embed.img_size[0]

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.trunk.forward_features(self.resize(images))
        return self.trunk.forward_head(tokens), tokens


class OpenCLIPViTTeacher(Teacher):
    """open_clip's own ``VisionTransformer`` (e.g. ``ViT-B-16``): pooled = open_clip's ``encode_image`` (the
    class token after ``ln_post``, times ``proj``), tokens = the ``ln_post``-normalised patch tokens without
    the class token, ``[B, M, width]`` (what the student's semantic tokens are compared with)."""

    visual: OpenCLIPVisionTransformer

    @property
    def image_size(self) -> int:
        return self.visual.image_size[0]

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.visual.forward_intermediates(self.resize(images), indices=1, normalize_intermediates=True,
                                                output_fmt="NLC")
        return out["image_features"], out["image_intermediates"][-1]


def build_teacher(config: TeacherConfig, student: TokLIPConfig, seed: int = 0) -> Teacher:
    """The teacher named in a train config, frozen and in eval mode (``seed``: a custom trunk's random init)."""
    if config.open_clip:
        teacher = _from_open_clip(config.open_clip, config.pretrained)
    elif config.timm_kwargs:
        teacher = build_small_teacher(config.timm_kwargs, student, seed=seed)
        if config.checkpoint:
            load_state_dict_strict(teacher, unwrap_state_dict(safe_load(config.checkpoint)),
                                   f"the teacher built from teacher.timm_kwargs={config.timm_kwargs}")
    else:
        raise ValueError("the config needs a teacher (distillation or init: teacher) but names none: "
                         "set teacher.open_clip (e.g. ViT-SO400M-16-SigLIP2-256) or teacher.timm_kwargs")
    return teacher.requires_grad_(False).eval()


def build_small_teacher(timm_kwargs: Mapping[str, Any], student: TokLIPConfig,
                        seed: Optional[int] = None) -> SigLIPTeacher:
    """A SigLIP-style teacher whose text tower has the student's text config (so it can be copied)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = {**SIGLIP_TRUNK_DEFAULTS, "img_size": student.image_size, **timm_kwargs}
        trunk = VisionTransformer(**kwargs)
        text = build_text_tower(student.text, student.embed_dim)
    if trunk.num_features != student.embed_dim:
        raise ValueError(f"teacher width {trunk.num_features} must equal the student's embed_dim "
                         f"{student.embed_dim}; set teacher.timm_kwargs.embed_dim accordingly")
    bias = SIGLIP_INIT_LOGIT_BIAS if student.init_logit_bias is None else student.init_logit_bias
    return SigLIPTeacher(trunk, text, student.init_logit_scale, bias)


def _from_open_clip(name: str, pretrained: Optional[str]) -> Teacher:
    import open_clip

    # force_custom_text: a CLIP's text transformer becomes the `text` submodule (as SigLIP's already is), so every
    # teacher's state dict reads visual.*, text.*, logit_scale; open_clip converts CLIP-layout weights on load
    model = open_clip.create_model(name, pretrained=pretrained, force_custom_text=True)
    visual, trunk = model.visual, getattr(model.visual, "trunk", None)
    if isinstance(visual, OpenCLIPVisionTransformer) and visual.attn_pool is None:
        bias = None if model.logit_bias is None else model.logit_bias.item()
        return OpenCLIPViTTeacher(visual, model.text, model.logit_scale.item(), bias)
    if isinstance(trunk, VisionTransformer) and getattr(visual.head, "proj", None) is None:
        return SigLIPTeacher(trunk, model.text, model.logit_scale.item(), model.logit_bias.item())
    raise ValueError(f"open_clip model {name!r} is neither a SigLIP-style timm ViT with map pooling and no "
                     "projection (e.g. ViT-SO400M-16-SigLIP2-384) nor open_clip's own ViT without attentional "
                     "pooling (e.g. ViT-B-16); TokLIP distils from one of those")


def resample_token_grid(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A square token grid ``[B, M, C]`` resampled to ``num_tokens`` positions (a square number).

    Bilinear with antialiasing: downsampling averages every teacher token a student position
    covers (as area resampling would), and upsampling interpolates between neighbours instead
    of repeating them. Used for the all-token distillation target and for the token similarity
    that evaluation reports, so that evaluation measures what training optimises.
    """
    b, m, c = tokens.shape
    if m == num_tokens:
        return tokens
    src, dst = round(m**0.5), round(num_tokens**0.5)
    if src * src != m or dst * dst != num_tokens:
        raise ValueError(f"cannot resample {m} teacher tokens to {num_tokens} positions: both must be square grids")
    grid = tokens.transpose(1, 2).reshape(b, c, src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode="bilinear", align_corners=False, antialias=True)
    return grid.flatten(2).transpose(1, 2)
