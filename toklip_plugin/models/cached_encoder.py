"""TokLIP's causal token encoder, run one code at a time with its own KV cache.

Because the encoder is causal, the semantic feature of code j depends on codes 0..j only.
During sampling a model that reads TokLIP features of its own codes (LlamaGen's fused GPT,
the unified LLaVA) therefore needs one encoder step per new code: embed it,
attend to the cached keys/values of 0..j, and write its own. This module drives the weights
of a :class:`~toklip_plugin.models.token_encoder.TokenEncoder` (its ``embed_codes``, with
``norm_pre`` when it has one, then timm ``Block``s: ``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp``) so that the step gives what the full causal forward gives on the same
prefix, without re-encoding the prefix.

An encoder with a class token (the OpenCLIP ablation model) works too: the class token is
appended after the codes, and under causal attention no code attends to it, so the code
features need nothing of it (only the pooled embedding does, which generation does not use).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

from .token_encoder import TokenEncoder

__all__ = ["CachedTokenEncoder"]


class CachedTokenEncoder(nn.Module):
    """A TokLIP encoder plus the code table it reads; full pass or cached single steps.

    It drives the encoder's weights and does not change them: freezing them is the owner's
    decision (the fused GPT freezes its copy; the unified LLaVA shares its vision tower's).
    """

    def __init__(self, encoder: TokenEncoder, codebook: torch.Tensor):
        super().__init__()
        if not encoder.causal:
            raise ValueError("incremental decoding needs a causal TokLIP encoder (encoder.causal = true)")
        self.encoder = encoder
        self.register_buffer("codebook", codebook.detach().clone())  # l2-normalised [K, C]
        # allocated by setup_cache; buffers so that .to() moves them, not persistent (no state-dict keys)
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.encoder.num_tokens

    @property
    def width(self) -> int:
        return self.encoder.pos_embed.shape[-1]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, n]`` from position 0 -> semantic features ``[B, n, d]`` (full causal pass)."""
        return self.encoder.forward_features(codes, self.codebook)

    def setup_cache(self, max_batch_size: int, dtype: torch.dtype) -> None:
        """Allocate ``[depth, B, heads, num_tokens, head_dim]`` keys and values (ambient device)."""
        attn: Attention = self.encoder.blocks[0].attn
        shape = (len(self.encoder.blocks), max_batch_size, attn.num_heads, self.num_tokens, attn.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype)
        self.v_cache = torch.zeros(shape, dtype=dtype)

    def step(self, codes: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Code at position ``pos`` (a 1-element tensor) ``[B, 1]`` -> its feature ``[B, 1, d]``.

        Positions ``0..pos-1`` must have been stepped before (for this batch); later
        positions are masked out, so stale cache entries from an earlier run do no harm.
        """
        if self.k_cache is None:
            raise RuntimeError("call setup_cache(max_batch_size, dtype) before step()")
        x = self.encoder.embed_codes(codes, self.codebook, positions=pos)
        visible = (torch.arange(self.num_tokens, device=codes.device) <= pos)[None]  # [1 query, num_tokens]
        for i, block in enumerate(self.encoder.blocks):
            x = x + block.drop_path1(block.ls1(self._attend(block.attn, block.norm1(x), i, pos, visible)))
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return self.encoder.norm(x)

    def _attend(self, attn: Attention, x: torch.Tensor, layer: int, pos: torch.Tensor,
                visible: torch.Tensor) -> torch.Tensor:
        """timm ``Attention.forward`` for one query token against the cached keys/values."""
        b = x.shape[0]
        q, k, v = attn.qkv(x).reshape(b, 1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        self.k_cache[layer, :b, :, pos] = k
        self.v_cache[layer, :b, :, pos] = v
        out = F.scaled_dot_product_attention(q, self.k_cache[layer, :b], self.v_cache[layer, :b], attn_mask=visible)
        out = attn.norm(out.transpose(1, 2).reshape(b, 1, -1))
        if getattr(attn, "gate", None) is not None:  # timm's optional output gate
            out = out * attn.gate(x).sigmoid()
        return attn.proj_drop(attn.proj(out))
