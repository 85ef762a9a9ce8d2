"""Fused GPTs for LlamaGen: ``GPT-B-toklip``, ``GPT-L-toklip``, ... (entry points ``llamagen.gpt_models``).

A LlamaGen ``Transformer`` whose input at each image position fuses the code embedding
with TokLIP's semantic feature of the codes so far (the paper's Table 4 / Table 7 setup).
What it adds to the plain GPT, all in :class:`TokLIPTransformer`:

- ``token_encoder``: a frozen causal TokLIP encoder and its code table (kept in the state dict,
  so train_c2i checkpoints are self-contained and resume strictly; checkpoints written before
  the rename, with ``toklip.*`` keys, still load);
- ``fusion``: ``concat`` (default; ``[code_emb, feature] @ W``), ``sum`` or ``weighted_sum``,
  initialised so that the fused GPT starts out as the plain GPT;
- a second KV cache, for the encoder: in decode, one encoder step per new code.

One factory per size in :data:`~.gpt.GPT_SIZES` (``GPT_B_toklip``, ... : the names the
``llamagen.gpt_models`` entry points in pyproject.toml point at). LlamaGen's scripts call a
factory with ModelArgs fields only, so the factory finds TokLIP itself: the built-in config
whose grid matches ``block_size`` (256 -> ``toklip-s``, 576 -> ``toklip-l``) with its released
weights, or ``$TOKLIP_MODEL`` (a name, a saved directory or an ``hf-hub:ORG/NAME[@REVISION]`` repo) /
``$TOKLIP_CHECKPOINT`` (and ``$TOKLIP_FUSION``). Python callers
pass ``toklip=``, ``toklip_checkpoint=``, ``fusion=``.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Optional, Union

import torch
import torch.nn as nn

from ...factory import RELEASED, load_toklip, resolve_config
from ...hub import is_hub_id
from ...models.cached_encoder import CachedTokenEncoder
from ...models.fusion import FUSIONS
from ...models.toklip import TokLIP
from .gpt import GPT_SIZES, ModelArgs, Transformer, model_args

__all__ = ["TokLIPTransformer", "FUSIONS", "build_fused_gpt", "load_frozen_toklip", "GPT_models"]

MODEL_ENV, CHECKPOINT_ENV, FUSION_ENV = "TOKLIP_MODEL", "TOKLIP_CHECKPOINT", "TOKLIP_FUSION"
DEFAULT_TOKLIP = {256: "toklip-s", 576: "toklip-l"}  # block_size -> the released TokLIP with that grid


class TokLIPTransformer(Transformer):
    """LlamaGen's GPT reading ``fusion(tok_embeddings(code), TokLIP feature)`` at each image position."""

    def __init__(self, config: ModelArgs, toklip: TokLIP, fusion: str = "concat"):
        super().__init__(config)  # plain GPT, initialised as upstream
        _check_compatible(config, toklip)
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        self.token_encoder = CachedTokenEncoder(toklip.encoder, toklip.vq.quantize.codebook()).requires_grad_(False)
        self.fusion = FUSIONS[fusion](config.dim, self.token_encoder.width)
        self.cfg_halves = False  # set at prefill: rows are generate()'s [conditional; null] halves
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype) -> None:
        super().setup_caches(max_batch_size, max_seq_length, dtype)
        self.token_encoder.setup_cache(max_batch_size, dtype)

    def forward(self, idx, cond_idx, input_pos=None, targets=None, mask=None, valid=None):
        if idx is None and cond_idx is not None:  # prefill: a new generation starts
            self.cfg_halves = self._is_cfg_batch(cond_idx)
        return super().forward(idx, cond_idx, input_pos, targets, mask, valid)

    def embed_tokens(self, idx: torch.Tensor, input_pos: Optional[torch.Tensor]) -> torch.Tensor:
        _check_codes(idx, self.vocab_size, self.block_size)
        with torch.no_grad():  # the encoder is frozen
            if input_pos is None:
                features = self.token_encoder(idx)
            else:
                features = self._decode_features(idx, input_pos)
        return self.fusion(self.tok_embeddings(idx), features)

    def _decode_features(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """One encoder step at image position ``input_pos - cls_token_num``.

        With classifier-free guidance generate() feeds ``[x; x]``: both halves hold the same
        codes, so the encoder runs on the first half only and its feature is shared.
        """
        pos = input_pos - self.cls_token_num
        if not torch.compiler.is_compiling():
            _check_position(input_pos, self.cls_token_num, self.block_size)
        if not self.cfg_halves:
            return self.token_encoder.step(idx, pos)
        half = idx.shape[0] // 2
        if not torch.compiler.is_compiling() and not torch.equal(idx[:half], idx[half:]):
            raise ValueError("after a classifier-free-guidance prefill ([conditional; null] halves) every decode "
                             "batch must be [x; x] (as LlamaGen's generate() builds it), but the halves differ")
        return self.token_encoder.step(idx[:half], pos).repeat(2, 1, 1)

    def _is_cfg_batch(self, cond_idx: torch.Tensor) -> bool:
        """True when the prefill batch is [conditional rows; as many null rows] (CFG).

        A batch that mixes null and conditional rows in any other layout (for example an
        odd number of rows) is refused: its decode halves could not be paired.
        """
        if torch.compiler.is_compiling():
            return False  # compiled graphs run the encoder on every row (correct, just slower)
        null = self._null_rows(cond_idx)
        if bool(null.all()) or not bool(null.any()):
            return False
        half = len(null) // 2
        if len(null) % 2 or not bool(null[half:].all()) or bool(null[:half].any()):
            raise ValueError(
                f"classifier-free guidance batch of {len(null)} rows with null condition rows at "
                f"{null.nonzero().flatten().tolist()}: a CFG batch must be [B conditional rows; B null rows] "
                "(even size, as LlamaGen's generate() builds it)"
            )
        return True

    def _null_rows(self, cond_idx: torch.Tensor) -> torch.Tensor:
        if self.model_type == "c2i":
            return cond_idx.reshape(len(cond_idx), -1)[:, 0] == self.num_classes
        uncond = self.cls_embedding.uncond_embedding.to(cond_idx.dtype)
        return (cond_idx == uncond).flatten(1).all(dim=1)


def _rename_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: keys of checkpoints written before ``toklip`` (the cached encoder)
    was renamed ``token_encoder`` (``toklip.encoder.*``, ``toklip.codebook``) are renamed in place."""
    old = prefix + "toklip."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "token_encoder." + key[len(old):]] = state_dict.pop(key)


# checks: clear errors instead of index errors deep inside -----------------------------------
def _check_compatible(config: ModelArgs, toklip: TokLIP) -> None:
    if toklip.num_tokens != config.block_size:
        g = toklip.grid_size
        raise ValueError(
            f"TokLIP {toklip.config.name!r} encodes a {g}x{g} grid ({toklip.num_tokens} codes) but the GPT's "
            f"block_size is {config.block_size}: use --image-size {toklip.image_size} with --downsample-size "
            f"{toklip.config.vq.downsample}, or a TokLIP whose grid matches (${MODEL_ENV})"
        )
    if toklip.config.vq.codebook_size != config.vocab_size:
        raise ValueError(f"TokLIP's VQ codebook has {toklip.config.vq.codebook_size} codes but the GPT's "
                         f"vocab_size is {config.vocab_size}: pass --vocab-size/--codebook-size "
                         f"{toklip.config.vq.codebook_size}")


def _check_codes(idx: torch.Tensor, vocab_size: int, block_size: int) -> None:
    if torch.compiler.is_compiling():
        return
    if idx.shape[1] > block_size:
        raise ValueError(f"{idx.shape[1]} codes per row but block_size is {block_size}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"code indices must lie in [0, {vocab_size}) (the VQ codebook), "
                         f"got min {int(idx.min())} max {int(idx.max())}")


def _check_position(input_pos: torch.Tensor, cls_token_num: int, block_size: int) -> None:
    if input_pos.numel() != 1:
        raise ValueError(f"decode takes one token per call, got input_pos of shape {tuple(input_pos.shape)}")
    p = int(input_pos)
    if not cls_token_num <= p < cls_token_num + block_size:
        raise ValueError(f"decode input_pos {p} is outside the image tokens [{cls_token_num}, "
                         f"{cls_token_num + block_size}); prefill the condition first")


# factories ------------------------------------------------------------------------------
def load_frozen_toklip(source: Union[str, os.PathLike, TokLIP, None], checkpoint, block_size: int) -> TokLIP:
    """The TokLIP whose encoder the fused GPT reads, with weights (never random by accident).

    ``source``: a TokLIP, a name / saved directory / config file, or None for ``$TOKLIP_MODEL``,
    else the released config with ``block_size`` tokens. ``checkpoint``: a file, ``"released"``,
    or None for ``$TOKLIP_CHECKPOINT``, else the released weights when the config names them.
    """
    if isinstance(source, TokLIP):
        return source.eval().requires_grad_(False)
    source = source or os.environ.get(MODEL_ENV) or DEFAULT_TOKLIP.get(block_size)
    if source is None:
        raise ValueError(f"no released TokLIP has {block_size} tokens (known: "
                         f"{', '.join(f'{n} for {b}' for b, n in DEFAULT_TOKLIP.items())}); "
                         f"set ${MODEL_ENV} to a TokLIP name, directory or config with that grid")
    config = resolve_config(source)
    checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
    is_dir = os.path.isdir(str(source)) or is_hub_id(source)  # a saved directory, local or an hf-hub: repo
    if checkpoint is None and not is_dir:
        if "checkpoint" not in config.weights:
            raise ValueError(f"TokLIP {config.name!r} has no released weights and none were given: the fused GPT "
                             f"needs a trained TokLIP. Set ${CHECKPOINT_ENV} (or pass toklip_checkpoint=), or set "
                             f"${MODEL_ENV} to a saved TokLIP directory")
        checkpoint = RELEASED
    return load_toklip(source, checkpoint=checkpoint).requires_grad_(False)


def build_fused_gpt(size: str, toklip=None, toklip_checkpoint=None, fusion: Optional[str] = None,
                    **kwargs) -> TokLIPTransformer:
    """``GPT_models[f"{size}-toklip"](**kwargs)``: kwargs are LlamaGen ``ModelArgs`` fields."""
    config = model_args(size, **kwargs)
    toklip = load_frozen_toklip(toklip, toklip_checkpoint, config.block_size)
    return TokLIPTransformer(config, toklip, fusion or os.environ.get(FUSION_ENV, "concat"))


# one factory per LlamaGen size; each is also the module attribute its entry point names
# (GPT_models["GPT-B-toklip"] is GPT_B_toklip)
GPT_models: dict[str, partial] = {f"{size}-toklip": partial(build_fused_gpt, size) for size in GPT_SIZES}
globals().update({name.replace("-", "_"): factory for name, factory in GPT_models.items()})
