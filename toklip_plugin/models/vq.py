"""LlamaGen's VQ image tokenizer (VQ-16), re-implemented with LlamaGen's names.

Module and parameter names match ``tokenizer/tokenizer_image/vq_model.py`` of LlamaGen
(``encoder``, ``quant_conv``, ``quantize.embedding``, ``quantize.codebook_used``,
``post_quant_conv``, ``decoder``), so ``vq_ds16_t2i.pt`` / ``vq_ds16_c2i.pt`` load with
``strict=True``. TokLIP keeps this model frozen: it only turns pixels into codes and back.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VQConfig

__all__ = ["VQModel", "VectorQuantizer"]

_CODEBOOK_USAGE_WINDOW = 65536  # size of LlamaGen's persistent `codebook_used` buffer


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [b, hw, c], scale 1/sqrt(c)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in taming / LlamaGen


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(in_ch: int, out_ch: int, num_blocks: int, with_attn: bool) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks))
    level.attn = nn.ModuleList(AttnBlock(out_ch) for _ in range(num_blocks if with_attn else 0))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, res in enumerate(level.res):
        h = res(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


def _middle(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)])


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        last = len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            level = _level(block_in, ch * mult, num_res_blocks, with_attn=i == last)
            block_in = ch * mult
            if i != last:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = _middle(block_in)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_channels: int = 3):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in)
        self.conv_blocks = nn.ModuleList()
        last = len(ch_mult) - 1
        for i in reversed(range(len(ch_mult))):
            level = _level(block_in, ch * ch_mult[i], num_res_blocks + 1, with_attn=i == last)
            block_in = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser over an l2-normalised codebook (LlamaGen, ``codebook_l2_norm=True``)."""

    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.n_e = codebook_size
        self.e_dim = embed_dim
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # LlamaGen keeps a rolling window of recent codes as a persistent buffer; its checkpoints hold it.
        self.register_buffer("codebook_used", torch.zeros(_CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        """The l2-normalised code vectors ``[codebook_size, embed_dim]`` actually used for look-ups."""
        return F.normalize(self.embedding.weight, dim=-1)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Code index per cell of ``z`` ``[B, C, h, w]``, as ``[B, h, w]``."""
        z = F.normalize(z.permute(0, 2, 3, 1), dim=-1)
        flat = z.reshape(-1, self.e_dim)
        codebook = self.codebook()
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        return dist.argmin(dim=1).view(z.shape[:3])

    def forward(self, z: torch.Tensor):
        """LlamaGen's contract: ``(z_q, (vq, commit, entropy, usage), (perplexity, min_encodings, indices))``."""
        codes = self.nearest_codes(z)
        z_n = F.normalize(z, dim=1)
        z_q = self.get_codebook_entry(codes.flatten(), z.shape)
        z_q = z_n + (z_q - z_n).detach()  # straight-through, as upstream
        return z_q, (None, None, None, 0), (None, None, codes.flatten())

    def get_codebook_entry(self, indices: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """Code vectors for ``indices``; with ``shape`` = (B, C, h, w) (or (B, h, w, C)) reshaped to it."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_e):
            raise IndexError(
                f"code indices must lie in [0, {self.n_e}), got min {int(indices.min())} max {int(indices.max())}"
            )
        z_q = F.embedding(indices.long(), self.codebook())
        if shape is None:
            return z_q
        if channel_first:
            b, c, h, w = shape
            return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q.reshape(shape)


class VQModel(nn.Module):
    """LlamaGen's ``VQModel``: ``encode`` / ``decode`` / ``decode_code`` plus ``tokenize``.

    Activations run channels-last: the convolutions dominate TokLIP's encode time and oneDNN /
    cuDNN run them faster in that layout (benchmarks/run.py). Weights keep the default layout,
    so state dicts stay contiguous for safetensors and LlamaGen.
    """

    def __init__(self, config: VQConfig = VQConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.ch, config.ch_mult, config.num_res_blocks, config.z_channels)
        self.decoder = Decoder(config.ch, config.ch_mult, config.num_res_blocks, config.z_channels)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` -> pre-quantisation latent ``[B, C, H/ds, W/ds]``."""
        return self.quant_conv(self.encoder(x.contiguous(memory_format=torch.channels_last)))

    def encode(self, x: torch.Tensor):
        return self.quantize(self.latent(x))

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` -> codes ``[B, (H/ds)*(W/ds)]`` in raster order."""
        return self.quantize.nearest_codes(self.latent(x)).flatten(1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant.contiguous(memory_format=torch.channels_last)))

    def decode_code(self, code_b: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        return self.decode(self.quantize.get_codebook_entry(code_b, shape, channel_first))

    def forward(self, x: torch.Tensor):
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff
