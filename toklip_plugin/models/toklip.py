"""The TokLIP model: frozen VQ tokenizer + trainable token encoder + frozen text tower.

``tokenize`` (pixels -> VQ codes), ``encode_codes`` (codes -> causal semantic tokens),
``encode_image`` / ``encode_text`` (pooled CLIP embeddings), ``decode_codes`` (codes ->
pixels through the untouched VQ decoder). Checkpoint I/O lives in ``checkpoints.py``.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TokLIPConfig
from ..transforms import check_image_batch
from .text import build_text_tower
from .token_encoder import TokenEncoder
from .vq import VQModel

__all__ = ["TokLIP"]


class TokLIP(nn.Module):
    def __init__(self, config: TokLIPConfig):
        super().__init__()
        self.config = config
        self.vq = VQModel(config.vq)
        self.encoder = TokenEncoder(
            config.encoder, config.num_tokens, config.vq.codebook_embed_dim, config.vq.codebook_size, config.embed_dim
        )
        self.text = build_text_tower(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        # a model trained with InfoNCE has no bias at all (no key in its files), as in open_clip's CLIP
        bias = None if config.init_logit_bias is None else nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.register_parameter("logit_bias", bias)
        self.vq.requires_grad_(False)

    # sizes -----------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def width(self) -> int:
        return self.config.encoder.width

    # image side ------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] -> VQ codes ``[B, N]`` (raster order), LlamaGen VQ's codes."""
        check_image_batch(images, self.image_size)
        _check_pixels(images, self.image_size)
        return self.vq.tokenize(images.to(self.vq.quant_conv.weight.dtype))

    def encode_codes(
        self, codes: torch.Tensor, layer: Optional[int] = None, attn_mask: Optional[torch.Tensor] = None,
        check_range: bool = True,
    ) -> torch.Tensor:
        """Codes ``[B, n]`` -> semantic tokens ``[B, n, d]``.

        ``layer=None`` gives the final (LayerNorm-ed) tokens. An int indexes the hidden states
        ``[embeddings, block 1, ..., block depth]`` like Hugging Face's ``hidden_states`` (so -2
        is the output of the second-to-last block), without the final norm.

        Codes outside ``[0, codebook_size)`` raise a ValueError (one host sync per call);
        ``check_range=False`` skips that check for codes known to be in range (the VQ's own).
        """
        self._check_codes(codes, check_range=check_range)
        codebook = self.vq.quantize.codebook()
        if layer is None:
            return self.encoder.forward_features(codes, codebook, attn_mask)
        self.encoder.check_layer(layer)
        return self.encoder.hidden_states(codes, codebook, attn_mask)[layer]

    def encode_codes_and_pool(self, codes: torch.Tensor, normalize: bool = False, check_range: bool = True
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[B, n]`` -> (semantic tokens ``[B, n, d]``, pooled embedding ``[B, E]``) in one pass.

        Works for every pooling; ``tok`` pooling (the class token) needs it, since the semantic
        tokens leave the class token out. ``normalize`` applies to the pooled embedding.
        ``check_range=False`` skips the codebook-range check and its host sync, for callers whose
        codes are known to be in range (the VQ's own, or a cache validated when it was read).
        """
        self._check_codes(codes, check_range=check_range)
        tokens, pooled = self.encoder.forward_pooled(codes, self.vq.quantize.codebook())
        return tokens, F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images -> pooled image embedding ``[B, E]``."""
        return self.encode_codes_and_pool(self.tokenize(images), normalize, check_range=False)[1]

    def pool_tokens(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Semantic tokens -> pooled embedding, for ``map`` pooling (see :meth:`encode_codes_and_pool`)."""
        pooled = self.encoder.forward_head(tokens)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, N]`` -> images ``[B, 3, S, S]`` in about [-1, 1], through the VQ decoder."""
        self._check_codes(codes, full_grid=True)
        g = self.grid_size
        shape = (codes.shape[0], self.config.vq.codebook_embed_dim, g, g)
        return self.vq.decode_code(codes.reshape(-1), shape)

    # text side -------------------------------------------------------------------------
    def encode_text(self, text_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids ``[B, L]`` (from this config's tokenizer) -> text embedding ``[B, E]``."""
        features = self.text(text_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * img_n @ txt_n.T``, plus ``logit_bias`` when the model has one (SigLIP)."""
        img = F.normalize(image_emb, dim=-1)
        txt = F.normalize(text_emb, dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def text_probs(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[images, texts]`` scores as its objective defines them: a softmax over the texts (InfoNCE, the
        official inference) for a model without a bias; an independent sigmoid per pair (SigLIP) with one."""
        logits = self.logits(image_emb, text_emb)
        return logits.softmax(dim=-1) if self.logit_bias is None else logits.sigmoid()

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor):
        return self.encode_image(images, normalize=True), self.encode_text(text_ids, normalize=True)

    # checks ----------------------------------------------------------------------------
    def _check_codes(self, codes: torch.Tensor, full_grid: bool = False, check_range: bool = True) -> None:
        size = self.config.vq.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"expected integer codes [B, n] in [0, {size}), got {got}")
        if codes.dtype not in (torch.int32, torch.int64):
            found = " holding values from {} to {}".format(*_value_range(codes)) if codes.numel() else ""
            raise ValueError(f"expected integer codes (int64 or int32) in [0, {size}), the VQ codebook of "
                             f"{self.config.name}; got {codes.dtype}{found}. Codes come from model.tokenize(images)")
        n = codes.shape[1]
        if n > self.num_tokens or (full_grid and n != self.num_tokens):
            want = f"exactly {self.num_tokens}" if full_grid else f"at most {self.num_tokens}"
            raise ValueError(f"{self.config.name} takes {want} codes per image "
                             f"({self.grid_size}x{self.grid_size} grid), got {n}")
        if check_range and codes.numel():
            low, high = _value_range(codes)  # the one host sync of the check
            if low < 0 or high >= size:
                raise ValueError(f"codes must lie in [0, {size}), the VQ codebook of {self.config.name}; got values "
                                 f"from {low} to {high}")

    def save_pretrained(self, directory, model_card: Union[bool, Mapping[str, Any]] = False) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically (see ``checkpoints.save_pretrained``).

        ``model_card``: also write ``README.md``, a Hugging Face model card: True, or a mapping of
        :class:`~toklip_plugin.model_card.ModelCardInfo` fields (``repo_id``, ``training_data``, ``eval_results``
        (a dict or a ``results.json``), ``base_model``, ``license``). Off by default: a directory of weights for
        local use needs no card, and one the user wrote by hand is kept.
        """
        from ..checkpoints import save_pretrained

        save_pretrained(self, directory, model_card)

    def push_to_hub(self, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                    commit_message: str = "Upload TokLIP model", token: Optional[str] = None,
                    model_card: Union[bool, Mapping[str, Any]] = True) -> str:
        """Upload what ``save_pretrained(directory, model_card)`` writes (with ``repo_id`` in the card's loading
        example) to the Hub repo ``repo_id`` (created if missing; ``private`` applies then) on branch ``revision``
        (default ``main``), as one commit; returns its URL. ``load_toklip("hf-hub:" + repo_id)`` loads it back."""
        from ..hub import upload_folder
        from ..model_card import card_info

        with tempfile.TemporaryDirectory(prefix="toklip-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder, card_info(model_card, repo_id) or False)
            return upload_folder(folder, repo_id, revision=revision, private=private, commit_message=commit_message,
                                 token=token)


def _value_range(values: torch.Tensor) -> tuple:
    """``(min, max)`` of a tensor as Python numbers, in one transfer (NaN when it holds one)."""
    low, high = torch.stack(list(torch.aminmax(values.detach()))).tolist()
    return low, high


def _check_pixels(images: torch.Tensor, image_size: int) -> None:
    """Float pixels without NaN / inf: a uint8 batch of 0..255 (or a broken one) would tokenize silently."""
    fix = f"toklip_plugin.image_transform({image_size}) maps PIL images to [-1, 1]"
    if not images.is_floating_point():
        found = " with values from {} to {}".format(*_value_range(images)) if images.numel() else ""
        raise ValueError(f"expected float images in [-1, 1], got {images.dtype}{found}; convert them (0..255 pixels: "
                         f"images.float() / 127.5 - 1), or {fix}")
    if images.numel():
        low, high = _value_range(images)  # one host sync: aminmax gives NaN when any value is NaN
        if not (math.isfinite(low) and math.isfinite(high)):
            count = int((~torch.isfinite(images)).sum())
            raise ValueError(f"images hold {count} NaN or infinite value(s) (min {low}, max {high}); expected finite "
                             f"values in [-1, 1]: {fix}")
