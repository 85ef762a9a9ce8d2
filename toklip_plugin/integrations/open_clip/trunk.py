"""TokLIP's image tower as a timm model, so that open_clip's ``TimmModel`` builds it from a model config.

The released TokLIP checkpoints come from an open_clip ``CustomTextCLIP`` whose vision tower is a timm
model (``visual.trunk``). :class:`TokLIPTrunk` is that model: the frozen LlamaGen VQ plus our
:class:`~toklip_plugin.models.token_encoder.TokenEncoder`, with the released names, so that open_clip's own
``load_checkpoint`` loads a released-layout file strictly:

- ``vq.*``: the VQ (LlamaGen's names);
- ``vq_table.*`` / ``vq_mapping.*``: the two linear layers of the code MLP (``code_mlp.fc1`` / ``fc2`` in
  ``TokenEncoder``);
- the rest under ``TokenEncoder``'s own names (``pos_embed``, ``blocks.N.*``, ``norm.*``, ``attn_pool.*``, ...).

It maps images ``[B, 3, S, S]`` in [-1, 1] to the pooled embedding, as ``TokLIP.encode_image`` does. The
image size is part of the architecture (open_clip does not pass it to timm), so each TokLIP config has its
own timm name (:func:`register_timm_models`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ...config import TokLIPConfig, get_model_config
from ...models.token_encoder import TokenEncoder
from ...models.vq import VQModel
from ...transforms import check_image_batch

__all__ = ["TokLIPTrunk", "TIMM_POOL", "create_trunk", "register_timm_models"]

# EncoderConfig.pool -> timm's global_pool name for the same pooling
TIMM_POOL = {"map": "map", "tok": "token"}


class TokLIPTrunk(TokenEncoder):
    """VQ + code mapping + causal token encoder + pooling: images -> pooled image embedding ``[B, E]``."""

    def __init__(self, config: TokLIPConfig):
        super().__init__(config.encoder, config.num_tokens, config.vq.codebook_embed_dim, config.vq.codebook_size,
                         config.embed_dim)
        self.image_size = config.image_size
        self.vq = VQModel(config.vq).requires_grad_(False)
        if config.encoder.mapping == "mlp":  # the released names of the code MLP's layers
            mlp = self.code_mlp
            del self.code_mlp
            self.vq_table, self.vq_mapping = mlp.fc1, mlp.fc2

    def map_codes(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        if self.config.mapping != "mlp":
            return super().map_codes(codes, codebook)
        vectors = F.embedding(codes, codebook).to(self.pos_embed.dtype)
        return self.vq_mapping(F.gelu(self.vq_table(vectors)))  # TokenEncoder's code MLP: exact GELU between

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image_batch(images, self.image_size)
        with torch.no_grad():
            codes = self.vq.tokenize(images.to(self.vq.quant_conv.weight.dtype))
        return self.forward_pooled(codes, self.vq.quantize.codebook())[1]


def create_trunk(config_name: str, pretrained: bool = False, num_classes: int = 0,
                 global_pool: Optional[str] = None, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                 cache_dir: Any = None, **unsupported: Any) -> TokLIPTrunk:
    """The timm entrypoint of the TokLIP config ``config_name`` (timm passes the arguments after ``pretrained``).

    There are no timm weights: TokLIP weights load through open_clip (``pretrained=FILE``) or
    ``toklip_plugin.load_toklip``. Arguments the trunk cannot honour raise instead of being dropped.
    """
    config = get_model_config(config_name)
    if pretrained:
        raise ValueError(f"TokLIP {config_name!r} has no timm weights; load TokLIP weights with "
                         f"open_clip.create_model_and_transforms({config_name!r}, pretrained=FILE) or "
                         "toklip_plugin.load_toklip(name, checkpoint=FILE)")
    pool = TIMM_POOL[config.encoder.pool]
    if num_classes or global_pool not in (None, pool):
        raise ValueError(f"TokLIP {config_name!r} ends in its own {pool!r} pooling with no classifier: it takes "
                         f"num_classes=0 and global_pool={pool!r} (open_clip: timm_pool {pool!r}, timm_proj 'none'); "
                         f"got num_classes={num_classes}, global_pool={global_pool!r}")
    if unsupported:
        raise TypeError(f"TokLIP {config_name!r} does not support {sorted(unsupported)} (the trunk has no "
                        "stochastic depth or patch dropout)")
    return TokLIPTrunk(config)


def register_timm_models(names: Mapping[str, str]) -> None:
    """Register ``{timm name: TokLIP config name}`` with ``timm.models.register_model``; names timm already
    knows are left alone, so calling this again changes nothing."""
    from timm.models import is_model, register_model

    for timm_name, config_name in names.items():
        if not is_model(timm_name):
            register_model(_entrypoint(timm_name, config_name))


def _entrypoint(timm_name: str, config_name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> TokLIPTrunk:
        return create_trunk(config_name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name
    entrypoint.__doc__ = f"TokLIP {config_name!r} image tower (see toklip_plugin.integrations.open_clip.trunk)."
    # a module attribute, as timm's own entrypoints are: register_model lists the name in this module's __all__
    globals()[timm_name] = entrypoint
    return entrypoint
