"""The student: the TokLIP being trained, initialised as the config says, with only the code mapping
and the token encoder (plus the logit scale / bias the contrastive loss learns) left trainable."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..checkpoints import (CheckpointError, init_from_open_clip, init_from_siglip2, load_state_dict_strict,
                           load_vq_checkpoint, open_clip_vit_to_native, resolve_weight_file, safe_load,
                           unwrap_state_dict)
from ..factory import create_model
from ..models.teacher import Teacher
from ..models.toklip import TokLIP
from ..models.vq import VQModel
from .config import TrainConfig

__all__ = ["build_student", "load_configured_vq", "StudentForward"]


def build_student(config: TrainConfig, teacher: Optional[Teacher]) -> TokLIP:
    """The TokLIP student: VQ weights loaded, encoder and text tower initialised, frozen parts frozen."""
    model = create_model(config.model_config(), seed=config.run.seed)
    load_configured_vq(model.vq, config)
    if config.model.init:
        _init_encoder(model, _init_source(config.model.init, teacher), config.model.init)
    if config.model.text_init:
        _init_text(model, _init_source(config.model.text_init, teacher), config.model.text_init)
    model.requires_grad_(False)
    model.encoder.requires_grad_(True)
    learn_logits = config.loss.contrastive != "none"
    model.logit_scale.requires_grad_(learn_logits)
    if model.logit_bias is not None:
        model.logit_bias.requires_grad_(learn_logits and config.loss.contrastive == "sigmoid")
    return model


def load_configured_vq(vq: VQModel, config: TrainConfig) -> None:
    """Load the VQ weights ``model.vq_checkpoint`` names (a path or ``released``); none: keep ``vq`` as it is."""
    source = config.model.vq_checkpoint
    if source == "released":
        source = resolve_weight_file(config.model_config().weights["vq_checkpoint"])
    if source:
        load_vq_checkpoint(vq, source)


def _init_source(source: str, teacher: Optional[Teacher]) -> dict[str, torch.Tensor]:
    """Weights to initialise from (open_clip layout, SigLIP2 or native ViT): the teacher's or a file's."""
    return teacher.state_dict() if source == "teacher" else unwrap_state_dict(safe_load(source))


# transformer blocks of open_clip's own VisionTransformer (e.g. ViT-B-16) / of a SigLIP2 timm trunk
_OPEN_CLIP_VIT_BLOCKS = "visual.transformer.resblocks."
_SIGLIP_BLOCKS = ("visual.trunk.blocks.", "blocks.")


def _is_open_clip_vit(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(_OPEN_CLIP_VIT_BLOCKS) for key in state)


def _init_encoder(model: TokLIP, state: dict[str, torch.Tensor], source: str) -> None:
    """The token encoder from open_clip ViT weights (``init_from_open_clip``) or SigLIP2 ones (``init_from_siglip2``),
    told apart by the transformer-block keys present."""
    if _is_open_clip_vit(state):
        init_from_open_clip(model, state, include_text=False)
    elif any(key.startswith(_SIGLIP_BLOCKS) for key in state):
        init_from_siglip2(model, _encoder_weights(state))
    else:
        raise CheckpointError(
            f"cannot initialise the token encoder from {source}: its state dict has neither open_clip ViT blocks "
            f"('{_OPEN_CLIP_VIT_BLOCKS}*', e.g. ViT-B-16) nor SigLIP2 ones ('visual.trunk.blocks.*' or 'blocks.*'); "
            f"its first keys are {sorted(state)[:6]}. Point model.init at open_clip / timm weights of one of those"
        )


def _encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision part of a SigLIP2 state dict (text and logit weights have their own option, text_init)."""
    return {k: v for k, v in state.items() if not k.startswith(("text.", "logit_scale", "logit_bias"))}


@torch.no_grad()
def _init_text(model: TokLIP, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy the text tower and the logit scale / bias of a SigLIP2 or open_clip ViT state dict."""
    if _is_open_clip_vit(state):  # a CLIP keeps its text transformer at the top level: rename to text.*
        state = open_clip_vit_to_native(state, model.config.grid_size)[0]
    text = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    load_state_dict_strict(model.text, text, f"the text tower of {model.config.name} from {source}")
    for name in ("logit_scale", "logit_bias"):
        if name in state and getattr(model, name) is not None:  # an InfoNCE student has no bias to copy into
            getattr(model, name).copy_(state[name])


class StudentForward(nn.Module):
    """What DDP / FSDP wrap, the trainable path: codes -> (pooled embedding, semantic tokens).

    ``train()`` keeps the frozen VQ and text tower in eval mode.
    """

    def __init__(self, model: TokLIP):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pooled = self.model.encode_codes_and_pool(codes, check_range=False)  # VQ or validated-cache codes: no host sync
        return pooled, tokens

    def train(self, mode: bool = True) -> "StudentForward":
        super().train(mode)
        self.model.vq.eval()
        self.model.text.eval()
        return self
