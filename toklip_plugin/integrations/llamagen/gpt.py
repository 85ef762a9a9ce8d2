"""LlamaGen's autoregressive GPT (``autoregressive/models/gpt.py``), re-implemented.

LlamaGen is a git checkout, not a package, so the fused TokLIP GPT cannot import it. This
module rebuilds the same architecture with the same ``ModelArgs`` fields, module and
parameter names (``cls_embedding``, ``tok_embeddings``, ``layers.N.attention.wqkv``, ...,
``norm``, ``output``) and the same ``Transformer`` contract that LlamaGen's scripts use:

- factory kwargs are ``ModelArgs`` fields (``vocab_size``, ``block_size``, ``num_classes``, ...);
- ``forward(idx, cond_idx, input_pos, targets, mask, valid) -> (logits, loss)``:
  training (both inputs: ``[cls | tokens]``, logits from ``cls_token_num - 1`` on),
  prefill (``idx=None``) and decode (``cond_idx=None``, one token, KV cache);
- ``setup_caches`` adds per-layer ``KVCache`` buffers, ``causal_mask`` and ``freqs_cis``.

So vanilla LlamaGen GPT checkpoints load here unchanged. One deliberate difference: a
full-sequence pass (both inputs, no ``input_pos``) also works in eval mode, where upstream
indexes ``freqs_cis`` with ``None`` and fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

__all__ = ["ModelArgs", "Transformer", "GPT_SIZES", "model_args", "precompute_freqs_cis_2d"]


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02

    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0

    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"

    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048


# conditions -------------------------------------------------------------------------------
def _dropped_rows(cond: torch.Tensor, prob: float, force_drop_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows whose condition becomes the null condition: at random in training (CFG), or forced."""
    if force_drop_ids is None:
        return torch.rand(cond.shape[0], device=cond.device) < prob
    return force_drop_ids == 1


class LabelEmbedder(nn.Module):
    """Class label -> one condition token; row ``num_classes`` is the null class for CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.where(_dropped_rows(labels, self.dropout_prob, force_drop_ids), self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids=None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels).unsqueeze(1)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features ``[B, T, caption_dim]`` -> condition tokens; ``uncond_embedding`` for CFG."""

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, token_num: int = 120):
        super().__init__()
        self.cap_proj = MLP(in_channels, hidden_size, hidden_size)
        self.register_buffer("uncond_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.uncond_prob = uncond_prob

    def token_drop(self, caption: torch.Tensor, force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        drop = _dropped_rows(caption, self.uncond_prob, force_drop_ids)
        return torch.where(drop[:, None, None], self.uncond_embedding, caption)

    def forward(self, caption: torch.Tensor, train: bool, force_drop_ids=None) -> torch.Tensor:
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.cap_proj(caption)


# transformer ------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU with LlamaGen's hidden size: 2/3 * 4 * dim, times the multiplier, rounded up."""

    def __init__(self, config: ModelArgs):
        super().__init__()
        hidden = int(2 * 4 * config.dim / 3)
        if config.ffn_dim_multiplier is not None:
            hidden = int(config.ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, config.multiple_of)
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache(nn.Module):
    """Keys and values of every position so far, ``[B, heads, max_seq_length, head_dim]``.

    Persistent buffers, as upstream: after ``setup_caches`` they appear in ``state_dict()``.
    """

    def __init__(self, max_batch_size: int, max_seq_length: int, n_head: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_head, max_seq_length, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype))

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k_cache[: k.shape[0], :, input_pos] = k
        self.v_cache[: v.shape[0], :, input_pos] = v
        return self.k_cache[: k.shape[0]], self.v_cache[: v.shape[0]]


def precompute_freqs_cis_2d(grid_size: int, n_elem: int, base: float = 10000, cls_token_num: int = 120) -> torch.Tensor:
    """2-D RoPE table ``[cls_token_num + grid_size**2, n_elem // 2, 2]`` (cos, sin).

    Half of each head's rotary pairs encode the row, half the column; the condition tokens
    get zero rows in front (upstream's layout, which checkpoints and generate rely on).
    """
    half = n_elem // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, device=freqs.device), freqs)
    grid = torch.cat([angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1)
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, n_elem // 2, 2), table])


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of ``x`` ``[B, S, H, D]`` by ``freqs_cis`` ``[S, D/2, 2]``, in fp32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        if config.dim % config.n_head:
            raise ValueError(f"dim {config.dim} is not divisible by n_head {config.n_head}")
        self.dim = config.dim
        self.head_dim = config.dim // config.n_head
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.wqkv = nn.Linear(config.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.kv_cache: Optional[KVCache] = None
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, input_pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_dim, kv_dim], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, self.n_head, self.head_dim), freqs_cis).transpose(1, 2)
        k = apply_rotary_emb(k.view(bsz, seqlen, self.n_kv_head, self.head_dim), freqs_cis).transpose(1, 2)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             dropout_p=self.attn_dropout_p if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(bsz, seqlen, self.dim)))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelArgs, drop_path: float):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, input_pos: Optional[torch.Tensor],
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), freqs_cis, input_pos, mask))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    def __init__(self, config: ModelArgs):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.n_layer = config.n_layer
        self.block_size = config.block_size
        self.num_classes = config.num_classes
        self.model_type = config.model_type
        self.cls_token_num = config.cls_token_num
        if config.model_type == "c2i":
            self.cls_embedding = LabelEmbedder(config.num_classes, config.dim, config.class_dropout_prob)
        elif config.model_type == "t2i":
            self.cls_embedding = CaptionEmbedder(config.caption_dim, config.dim, config.class_dropout_prob)
        else:
            raise ValueError(f"model_type must be 'c2i' or 't2i', got {config.model_type!r}")
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        rates = torch.linspace(0, config.drop_path_rate, config.n_layer).tolist()
        self.layers = nn.ModuleList(TransformerBlock(config, rate) for rate in rates)
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.grid_size = _grid_side(config.block_size)
        # a plain attribute, not a buffer: upstream checkpoints do not hold it
        self.freqs_cis = self._rope_table()
        self.max_batch_size = -1
        self.max_seq_length = -1
        self.initialize_weights()

    def _rope_table(self) -> torch.Tensor:
        cfg = self.config
        return precompute_freqs_cis_2d(self.grid_size, cfg.dim // cfg.n_head, cfg.rope_base, cfg.cls_token_num)

    def initialize_weights(self) -> None:
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype) -> None:
        """Allocate KV caches, the causal mask and the RoPE table (on the ambient ``torch.device``)."""
        head_dim = self.config.dim // self.config.n_head
        max_seq_length = find_multiple(max_seq_length, 8)
        self.max_seq_length = max_seq_length
        self.max_batch_size = max_batch_size
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, max_seq_length, self.config.n_head, head_dim, dtype)
        causal = torch.tril(torch.ones(max_seq_length, max_seq_length, dtype=torch.bool))
        self.causal_mask = causal.unsqueeze(0).repeat(max_batch_size, 1, 1)
        self.freqs_cis = self._rope_table()

    def embed_tokens(self, idx: torch.Tensor, input_pos: Optional[torch.Tensor]) -> torch.Tensor:
        """Input vectors for image tokens; the fused TokLIP GPT overrides this one hook."""
        return self.tok_embeddings(idx)

    def forward(
        self,
        idx: Optional[torch.Tensor],
        cond_idx: Optional[torch.Tensor],
        input_pos: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        valid: Optional[torch.Tensor] = None,
    ):
        full_sequence = idx is not None and cond_idx is not None
        if full_sequence:  # training: [condition | tokens], causal attention, no cache
            cond = self.cls_embedding(cond_idx, train=self.training)[:, : self.cls_token_num]
            h = torch.cat([cond, self.embed_tokens(idx, None)], dim=1)
            self.freqs_cis = self.freqs_cis.to(h.device)
            freqs_cis, input_pos = self.freqs_cis[: h.shape[1]], None
        else:  # inference through the KV cache: prefill the condition, or decode one token
            if cond_idx is not None:
                h = self.cls_embedding(cond_idx, train=self.training)[:, : self.cls_token_num]
            else:
                h = self.embed_tokens(idx, input_pos)
            mask = self.causal_mask[: h.shape[0], None, input_pos]
            freqs_cis = self.freqs_cis[input_pos]
        h = self.tok_dropout(h)
        for layer in self.layers:
            h = layer(h, freqs_cis, input_pos, mask)
        logits = self.output(self.norm(h)).float()
        if full_sequence:
            logits = logits[:, self.cls_token_num - 1:].contiguous()
        return logits, self._loss(logits, targets, valid)

    @staticmethod
    def _loss(logits: torch.Tensor, targets: Optional[torch.Tensor], valid: Optional[torch.Tensor]):
        if targets is None:
            return None
        flat = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        if valid is None:
            return flat.mean()
        weight = valid[:, None].repeat(1, targets.shape[1]).view(-1)
        return (flat * weight).sum() / max(weight.sum(), 1)

    def get_fsdp_wrap_module_list(self) -> list[nn.Module]:
        return list(self.layers)


def _grid_side(block_size: int) -> int:
    side = int(round(block_size**0.5))
    if side * side != block_size:
        raise ValueError(f"block_size {block_size} is not a square number of tokens; "
                         "it should be (image_size // downsample_size) ** 2")
    return side


# sizes: name -> (n_layer, n_head, dim), as LlamaGen's GPT_models ---------------------------
GPT_SIZES = {
    "GPT-B": (12, 12, 768),  # 111M, class-conditional
    "GPT-L": (24, 16, 1024),  # 343M
    "GPT-XL": (36, 20, 1280),  # 775M
    "GPT-XXL": (48, 24, 1536),  # 1.4B
    "GPT-XXXL": (48, 40, 2560),  # 3.9B
    "GPT-1B": (22, 32, 2048),  # 1.2B, text-conditional
    "GPT-3B": (24, 32, 3200),  # 3.1B
    "GPT-7B": (32, 32, 4096),  # 6.6B
}


def model_args(size: str, **kwargs) -> ModelArgs:
    """``ModelArgs`` of a LlamaGen size name (``GPT-B``, ...) with the factory kwargs applied.

    Unlike upstream, kwargs may also override the size itself (tests build tiny GPTs this way).
    """
    if size not in GPT_SIZES:
        raise KeyError(f"unknown LlamaGen GPT size {size!r}; known: {', '.join(GPT_SIZES)}")
    n_layer, n_head, dim = GPT_SIZES[size]
    return ModelArgs(**{"n_layer": n_layer, "n_head": n_head, "dim": dim, **kwargs})
