"""The TokLIP token encoder: VQ codes -> semantic tokens -> pooled image embedding.

Architecture of a SigLIP2 vision tower without the patch embedding, built on timm's
``Block`` and ``AttentionPoolLatent`` so that SigLIP2 weights (timm / open_clip) map onto
it by name: ``pos_embed``, ``blocks.N.*``, ``norm.*``, ``attn_pool.*``. In front of the
blocks, a code mapping turns codes into width-``d`` vectors: the paper's MLP over the
l2-normalised VQ code vectors (8 -> 4d -> d, exact GELU), or a learned table per code
(the codebook-embedding ablation). The blocks attend causally in raster order, so token
i depends on codes 0..i only; the pool head attends to all tokens.

The paper's ablation model is an OpenCLIP ViT-B/16 instead (``EncoderConfig`` options): a
``class_embedding`` appended *after* the codes, with its own (last) row of ``pos_embed``, an
optional ``norm_pre`` and ``tok`` pooling of the class token's output followed by a bias-free
``proj``. The class token sees every code; the codes never see it under causal attention, so
their tokens are the same with or without it. Semantic tokens never include it.
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

_ACTIVATIONS = {"gelu_tanh": partial(nn.GELU, approximate="tanh"), "gelu": nn.GELU}


class TokenEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, num_tokens: int, code_dim: int, codebook_size: int,
                 embed_dim: Optional[int] = None):
        super().__init__()
        self.config = config
        self.causal = config.causal
        self.grad_checkpointing = False
        d = config.width
        norm, act = partial(nn.LayerNorm, eps=config.norm_eps), _ACTIVATIONS[config.act]
        if config.mapping == "mlp":
            self.code_mlp = Mlp(code_dim, 4 * d, d, act_layer=nn.GELU)
        else:
            self.code_embed = nn.Embedding(codebook_size, d)
        if config.has_class_token:
            self.class_embedding = nn.Parameter(torch.zeros(d))
        # one row per grid position, then (with a class token) the class token's row
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + int(config.has_class_token), d))
        self.norm_pre = norm(d) if config.norm_pre else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(d, config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, norm_layer=norm, act_layer=act)
            for _ in range(config.depth)
        )
        self.norm = norm(d)
        if config.pool == "map":
            self.attn_pool = AttentionPoolLatent(d, num_heads=config.heads, mlp_ratio=config.mlp_ratio,
                                                 norm_layer=norm, act_layer=act)
        if config.proj:
            self.proj = nn.Parameter(torch.zeros(d, embed_dim if embed_dim is not None else d))
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
        for name in ("class_embedding", "proj"):  # open_clip's scale for both
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=self.config.width**-0.5)
        if hasattr(self, "attn_pool"):
            self.attn_pool.init_weights()

    @property
    def num_tokens(self) -> int:
        return self.pos_embed.shape[1] - int(self.config.has_class_token)

    def embed_codes(self, codes: torch.Tensor, codebook: torch.Tensor,
                    positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes ``[B, n]`` -> block input ``[B, n, d]``: code mapping + position embedding (+ ``norm_pre``).

        ``codebook`` is the VQ model's l2-normalised code table ``[K, C]``. The codes sit at grid
        positions ``0..n-1`` (raster order, n <= num_tokens) unless ``positions`` says otherwise
        (incremental decoding embeds one new code at a time).
        """
        pos = self.pos_embed[:, : codes.shape[1]] if positions is None else self.pos_embed[:, positions]
        return self.norm_pre(self.map_codes(codes, codebook) + pos)

    def _append_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, d]`` block inputs -> ``[B, n + 1, d]`` with the class token (and its position row) last."""
        cls = self.norm_pre(self.class_embedding + self.pos_embed[0, -1]).to(x.dtype)
        return torch.cat([x, cls.expand(x.shape[0], 1, -1)], dim=1)

    @property
    def _tokens_see_class_token(self) -> bool:
        """Whether the code tokens attend to the class token (bidirectional attention with one)."""
        return self.config.has_class_token and not self.causal

    def map_codes(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """The code mapping alone: codes ``[B, n]`` -> ``[B, n, d]``, no position embedding."""
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

    def hidden_states(self, codes: torch.Tensor, codebook: torch.Tensor,
                      attn_mask: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """The code tokens' hidden states ``[embedding, block 1, ..., block depth]``, each ``[B, n, d]``.

        The class token runs along only where the code tokens can see it (bidirectional attention).
        """
        if not self._tokens_see_class_token:
            return self.forward_blocks(self.embed_codes(codes, codebook), attn_mask)
        if attn_mask is not None:
            raise ValueError("an explicit attn_mask covers the code tokens only, but with bidirectional attention "
                             "they also attend to the class token; leave attn_mask=None")
        hidden = self.forward_blocks(self._append_class_token(self.embed_codes(codes, codebook)))
        return [h[:, :-1] for h in hidden]

    def check_layer(self, layer: int) -> None:
        """Raise a ValueError unless ``layer`` indexes :meth:`hidden_states` (depth + 1 entries, Python indexing:
        ``0`` the embeddings, ``depth`` or ``-1`` the last block's output, ``-(depth + 1)`` the embeddings)."""
        count = len(self.blocks) + 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f"layer {layer!r} is outside this encoder's {count} hidden states (the embeddings and "
                             f"{count - 1} blocks): give an int in [{-count}, {count - 1}] (-1: the last block's "
                             "output), or layer=None for the final, LayerNorm-ed tokens")

    def forward_features(
        self, codes: torch.Tensor, codebook: torch.Tensor, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Codes -> semantic tokens ``[B, n, d]`` (after the final LayerNorm; never the class token)."""
        return self.norm(self.hidden_states(codes, codebook, attn_mask)[-1])

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Semantic tokens -> pooled image embedding ``[B, E]`` (map pooling over all tokens)."""
        if not hasattr(self, "attn_pool"):
            raise ValueError("this encoder pools its class token ('tok' pooling), which the semantic tokens do not "
                             "include; use forward_pooled(codes, codebook) (TokLIP.encode_codes_and_pool)")
        return self._project(self.attn_pool(tokens))

    def forward_pooled(self, codes: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes -> (semantic tokens ``[B, n, d]``, pooled image embedding ``[B, E]``) in one pass."""
        if not self.config.has_class_token:
            tokens = self.forward_features(codes, codebook)
            return tokens, self.forward_head(tokens)
        x = self._append_class_token(self.embed_codes(codes, codebook))
        x = self.norm(self.forward_blocks(x)[-1])
        return x[:, :-1], self._project(x[:, -1])

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.proj if self.config.proj else pooled

    def forward(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(codes, codebook)[1]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
