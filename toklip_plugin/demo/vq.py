"""The demo's frozen VQ: LlamaGen's VQ-16 layout, set by hand so that codes carry colour and contrast.

No pretrained VQ-16 is reachable offline, and a randomly initialised one maps the demo's images to
codes that carry almost no colour or shape (a linear probe is near chance). This deterministic
stand-in keeps LlamaGen's architecture, key names and code path (``VQModel.tokenize``), so the
students read it through ``model.vq_checkpoint`` exactly as they would read ``vq_ds16_t2i.pt``:

- :func:`patch_statistics_vq` sets the encoder so that each 16x16 patch's latent holds its mean
  colour and its top/bottom, left/right and diagonal luminance contrasts;
- :func:`fit_codebook` places the codebook on the data by spherical k-means (what VQ training
  would learn for an l2-normalised codebook);
- :func:`fit_decoder` (``toklip-demo unified``, which draws images) trains the decoder to reconstruct
  the images from their quantised latents with the encoder and codebook frozen (VQ training's MSE term),
  ``post_quant_conv`` first set to read the codebook standardised (:func:`standardise_post_quant_conv`).
  Plain ``toklip-demo`` never decodes and leaves the decoder random.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import TokLIPConfig
from ..models.vq import VQModel
from ..progress import ProgressBar

__all__ = ["build_demo_vq", "fit_codebook", "fit_decoder", "patch_statistics_vq", "standardise_post_quant_conv",
           "vq_latents"]

RGB = range(3)
NUM_FEATURES = 6  # mean R, G, B; vertical, horizontal and diagonal contrast
GROUP_CONST = 100.0  # constants beside each feature so that GroupNorm keeps absolute values
CODEBOOK_POINTS = 30000  # latents k-means samples (toklip-tiny: 64 per image, so ~470 images suffice)


def build_demo_vq(config: TokLIPConfig, images: torch.Tensor, seed: int = 0, max_images: int = 500) -> VQModel:
    """A frozen VQ of ``config.vq``'s layout: hand-set encoder, codebook fitted to the first ``max_images`` of
    ``images`` ``[n, 3, S, S]`` (the encoder is the costly part; k-means samples :data:`CODEBOOK_POINTS`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the decoder stays random: the demo never decodes
        vq = VQModel(config.vq)
    patch_statistics_vq(vq)
    fit_codebook(vq, vq_latents(vq, images[:max_images]), seed=seed)
    return vq.requires_grad_(False).eval()


@torch.no_grad()
def patch_statistics_vq(vq: VQModel) -> None:
    """Set ``vq``'s encoder and ``quant_conv`` to compute per-patch colour and contrast (module docstring).

    Zeroed residual branches make every block an identity, the downsampling convs average, the
    second-to-last one also takes contrasts, and the last level spreads the features apart so that
    ``norm_out`` (GroupNorm) does not normalise them away.
    """
    enc = vq.encoder
    for p in enc.parameters():
        p.zero_()
    for c in RGB:
        enc.conv_in.weight[c, c, 1, 1] = 1.0
    levels = list(enc.conv_blocks)
    for block in [*(b for level in levels for b in level.res), *enc.mid]:
        _identity_shortcut(block)
    for level in levels[:-2]:
        for c in RGB:
            level.downsample.conv.weight[c, c, 0:2, 0:2] = 0.25
    _set_patch_contrasts(levels[-2].downsample.conv.weight)
    _spread_features_over_groups(levels[-1].res[0].nin_shortcut, enc)
    vq.quant_conv.weight.zero_()
    vq.quant_conv.bias.zero_()
    for k in range(NUM_FEATURES):
        vq.quant_conv.weight[k, k, 0, 0] = 1.0
    vq.quant_conv.bias[NUM_FEATURES] = 0.5


def _identity_shortcut(block: nn.Module) -> None:
    shortcut = getattr(block, "nin_shortcut", None)
    if shortcut is not None:
        n = min(shortcut.in_channels, shortcut.out_channels)
        shortcut.weight[torch.arange(n), torch.arange(n), 0, 0] = 1.0


def _set_patch_contrasts(weight: torch.Tensor) -> None:
    """A 2x2 grid of 8x8-pixel means -> channels 0-2 mean colour, 3-5 the three luminance contrasts."""
    for c in RGB:
        weight[c, c, 0:2, 0:2] = 0.25
        weight[3, c, 0, 0:2], weight[3, c, 1, 0:2] = 1 / 6, -1 / 6
        weight[4, c, 0:2, 0], weight[4, c, 0:2, 1] = 1 / 6, -1 / 6
        weight[5, c, 0, 0] = weight[5, c, 1, 1] = 1 / 6
        weight[5, c, 0, 1] = weight[5, c, 1, 0] = -1 / 6


def _spread_features_over_groups(shortcut: nn.Conv2d, enc: nn.Module) -> None:
    """Feature k -> channel 4k with constants +-C beside it, so ``norm_out`` (4 channels per group)
    keeps its absolute value; ``conv_out`` reads it back into channel k."""
    shortcut.weight.zero_()
    shortcut.bias.zero_()
    for k in range(NUM_FEATURES):
        shortcut.weight[4 * k, k, 0, 0] = 1.0
        shortcut.bias[4 * k + 1], shortcut.bias[4 * k + 2] = GROUP_CONST, -GROUP_CONST
        enc.norm_out.weight[4 * k] = GROUP_CONST / math.sqrt(2)
        enc.conv_out.weight[k, 4 * k, 1, 1] = 1.0


@torch.no_grad()
def vq_latents(vq: VQModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The VQ's pre-quantisation latents ``[n, C, h, w]``."""
    return torch.cat([vq.latent(chunk) for chunk in images.split(batch_size)])


@torch.no_grad()
def fit_codebook(vq: VQModel, latents: torch.Tensor, iters: int = 15, seed: int = 0,
                 max_points: int = CODEBOOK_POINTS) -> None:
    """Spherical k-means of the l2-normalised latents into the VQ's codebook."""
    pts = F.normalize(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]), dim=-1)
    g = torch.Generator().manual_seed(seed)
    pts = pts[torch.randperm(len(pts), generator=g)[:max_points]]
    k = vq.quantize.n_e
    centers = pts[torch.randint(len(pts), (k,), generator=g)]
    for _ in range(iters):
        assign = (pts @ centers.t()).argmax(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, pts)
        counts = torch.bincount(assign, minlength=k)[:, None]
        centers = torch.where(counts > 0, F.normalize(sums, dim=-1), centers)
    vq.quantize.embedding.weight.copy_(centers)


def fit_decoder(vq: VQModel, images: torch.Tensor, steps: int, batch_size: int = 4, lr: float = 3e-3,
                seed: int = 0, max_images: int = 500) -> list[float]:
    """Train ``post_quant_conv`` and the decoder on the MSE between ``decode(quantize(encode(x)))`` and ``x`` for
    random batches of the first ``max_images`` of ``images`` ``[n, 3, S, S]`` (AdamW, one-cycle schedule, fp32,
    which beats bf16 autocast on a CPU at this size), starting from :func:`standardise_post_quant_conv`; the
    encoder and codebook stay frozen. Returns the loss per step.

    Whole images, not crops: the decoder's GroupNorms normalise over the whole grid, so a decoder fitted on
    crops decodes whole images with the wrong statistics.
    """
    with torch.no_grad():
        quantised = torch.cat([vq.encode(chunk)[0] for chunk in images[:max_images].split(64)])
    standardise_post_quant_conv(vq, seed)
    parts = [vq.post_quant_conv, vq.decoder]
    for part in parts:
        part.requires_grad_(True).train()
    optimizer = torch.optim.AdamW([p for part in parts for p in part.parameters()], lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in ProgressBar(range(steps), desc="VQ decoder", dynamic_ncols=True):
        idx = torch.randint(len(quantised), (batch_size,), generator=generator)
        loss = F.mse_loss(vq.decode(quantised[idx]), images[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    for part in parts:
        part.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def standardise_post_quant_conv(vq: VQModel, seed: int = 0, eps: float = 1e-3) -> None:
    """Re-initialise ``post_quant_conv`` (seeded) to read the codebook standardised per channel.

    The code vectors are l2-normalised and share the constant channel, so they differ by only 0.1-0.3 per
    channel around one common direction: at a plain random initialisation ``post_quant_conv`` passes the
    decoder almost the same input for every code, and a short fit barely beats the mean image. Dividing each
    channel by its standard deviation over the codebook's rows and removing its mean gives the decoder
    order-one, code-dependent inputs from the first step.
    """
    codebook = vq.quantize.codebook()
    mean, std = codebook.mean(0), codebook.std(0)
    conv = vq.post_quant_conv
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(conv.in_channels)  # nn.Conv2d's default range for a 1x1 kernel
    weight = (2 * torch.rand(conv.out_channels, conv.in_channels, generator=generator) - 1) * bound / (std + eps)
    conv.weight.copy_(weight[:, :, None, None])
    conv.bias.copy_(-weight @ mean)
