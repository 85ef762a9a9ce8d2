"""The frozen SigLIP-style teacher: a timm ViT trunk with map pooling plus an open_clip text tower.

It is held in open_clip's key layout (``visual.trunk.*``, ``text.*``, ``logit_scale``,
``logit_bias``), so ``checkpoints.init_from_siglip2`` initialises a TokLIP student from its
state dict directly. Real runs take SigLIP2 from open_clip; tests and the demo build a small
trunk from ``timm_kwargs`` (and the demo trains it first).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from ..checkpoints import load_state_dict_strict, safe_load, unwrap_state_dict
from ..config import TokLIPConfig
from ..models.text import build_text_tower
from .config import TeacherSection

__all__ = ["SigLIPTeacher", "build_teacher", "SIGLIP_TRUNK_DEFAULTS"]

# timm kwargs shared by every SigLIP-style trunk: no class token, map pooling, no classifier.
SIGLIP_TRUNK_DEFAULTS: dict[str, Any] = {
    "patch_size": 16, "class_token": False, "global_pool": "map", "num_classes": 0, "act_layer": "gelu_tanh",
}


class SigLIPTeacher(nn.Module):
    def __init__(self, trunk: VisionTransformer, text: nn.Module, logit_scale: float, logit_bias: float):
        super().__init__()
        self.visual = nn.ModuleDict({"trunk": trunk})
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias)))

    @property
    def trunk(self) -> VisionTransformer:
        return self.visual["trunk"]

    @property
    def image_size(self) -> int:
        return self.trunk.patch_embed.img_size[0]

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Student-resolution images -> the teacher's resolution (bicubic, antialiased)."""
        if images.shape[-1] == self.image_size:
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                             align_corners=False, antialias=True)

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at any resolution -> (pooled embedding ``[B, E]``, tokens ``[B, M, E]``)."""
        tokens = self.trunk.forward_features(self.resize(images))
        return self.trunk.forward_head(tokens), tokens

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled = self.image_features(images)[0]
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, text_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text_ids)
        return F.normalize(features, dim=-1) if normalize else features


def build_teacher(config: TeacherSection, student: TokLIPConfig, seed: int = 0) -> SigLIPTeacher:
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
    return SigLIPTeacher(trunk, text, student.init_logit_scale, student.init_logit_bias)


def _from_open_clip(name: str, pretrained: Optional[str]) -> SigLIPTeacher:
    import open_clip

    model = open_clip.create_model(name, pretrained=pretrained)
    trunk = getattr(model.visual, "trunk", None)
    if not isinstance(trunk, VisionTransformer) or getattr(model.visual.head, "proj", None) is not None:
        raise ValueError(f"open_clip model {name!r} is not a SigLIP-style timm ViT with map pooling and "
                         "no projection; TokLIP distils from SigLIP/SigLIP2 towers (e.g. ViT-SO400M-16-SigLIP2-384)")
    return SigLIPTeacher(trunk, model.text, model.logit_scale.item(), model.logit_bias.item())
