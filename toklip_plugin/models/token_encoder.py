"""The TokLIP token encoder: VQ codes -> semantic tokens -> pooled image embedding.

Architecture of a SigLIP2 vision tower without the patch embedding, built on timm's
``Block`` and ``AttentionPoolLatent`` so that SigLIP2 weights (timm / open_clip) map onto
it by name: ``pos_embed``, ``blocks.N.*``, ``norm.*``, ``attn_pool.*``. In front of the
blocks, a code mapping turns codes into width-``d`` vectors: the paper's MLP over the
l2-normalised VQ code vectors (8 -> 4d -> d, exact GELU), or a learned table per code
(the codebook-embedding ablation). The blocks attend causally in raster order, so token
i depends on codes 0..i only; the pool head attends to all tokens.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import AttentionPoolLatent, Mlp, trunc_normal_
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from ..config import EncoderConfig

__all__ = ["TokenEncoder"]

_LayerNorm = partial(nn.LayerNorm, eps=1e-6)
_GeluTanh = partial(nn.GELU, approximate="tanh")


class TokenEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, num_tokens: int, code_dim: int, codebook_size: int):
        super().__init__()
        self.config = config
        self.causal = config.causal
        self.grad_checkpointing = False
        d = config.width
        if config.mapping == "mlp":
            self.code_mlp = Mlp(code_dim, 4 * d, d, act_layer=nn.GELU)
        else:
            self.code_embed = nn.Embedding(codebook_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, d))
        self.blocks = nn.ModuleList(
            Block(d, config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=True,
                  norm_layer=_LayerNorm, act_layer=_GeluTanh)
            for _ in range(config.depth)
        )
        self.norm = _LayerNorm(d)
        self.attn_pool = AttentionPoolLatent(
            d, num_heads=config.heads, mlp_ratio=config.mlp_ratio, norm_layer=_LayerNorm, act_layer=_GeluTanh
        )
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if hasattr(self, "code_embed"):
            nn.init.normal_(self.code_embed.weight, std=0.02)
        self.attn_pool.init_weights()

    @property
    def num_tokens(self) -> int:
        return self.pos_embed.shape[1]

    def embed_codes(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, n]`` (n <= num_tokens, raster order from 0) -> block input ``[B, n, d]``.

        ``codebook`` is the VQ model's l2-normalised code table ``[K, C]``.
        """
        return self.map_codes(codes, codebook) + self.pos_embed[:, : codes.shape[1]]

    def map_codes(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """The code mapping alone, without position embedding (incremental decoding adds its own)."""
        if self.config.mapping == "mlp":
            return self.code_mlp(nn.functional.embedding(codes, codebook).to(self.pos_embed.dtype))
        return self.code_embed(codes)

    def forward_blocks(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """Run the blocks; returns the hidden states ``[input, block 1 out, ..., block depth out]``.

        With ``attn_mask=None`` the blocks use fused SDPA with ``is_causal`` (or full attention
        when the encoder is bidirectional); an explicit additive mask replaces that.
        """
        is_causal = self.causal and attn_mask is None
        hidden = [x]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=is_causal)
            hidden.append(x)
        return hidden

    def forward_features(
        self, codes: torch.Tensor, codebook: torch.Tensor, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Codes -> semantic tokens ``[B, n, d]`` (after the final LayerNorm)."""
        return self.norm(self.forward_blocks(self.embed_codes(codes, codebook), attn_mask)[-1])

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Semantic tokens -> pooled image embedding ``[B, d]`` (map pooling over all tokens)."""
        return self.attn_pool(tokens)

    def forward(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(codes, codebook))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
