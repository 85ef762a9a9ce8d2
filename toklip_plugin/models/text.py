"""The frozen text side: open_clip's ``TextTransformer`` and the matching tokenizer.

The tower is built from an open_clip ``text_cfg`` (SigLIP2's: bidirectional attention,
last-token pooling, projection with bias), so released ``text.*`` weights load by name.
SigLIP2's Gemma tokenizer comes from the Hub or a local folder; ``toklip-tiny`` uses
open_clip's bundled BPE vocabulary so everything runs offline.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch.nn as nn
from open_clip.model import _build_text_tower
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

__all__ = ["build_text_tower", "build_tokenizer"]

TOKENIZER_ENV = "TOKLIP_TOKENIZER_PATH"


def build_text_tower(text_cfg: Mapping[str, Any], embed_dim: int) -> nn.Module:
    return _build_text_tower(embed_dim, dict(text_cfg))


def build_tokenizer(tokenizer_cfg: Mapping[str, Any], context_length: int, path: str | None = None) -> Callable:
    """A callable ``texts -> LongTensor [B, context_length]``.

    For Hub tokenizers, ``path`` (or the ``TOKLIP_TOKENIZER_PATH`` environment variable) may name
    a local folder holding the tokenizer files; otherwise the Hub name from the config is used.
    """
    kind = tokenizer_cfg.get("kind", "open_clip_bpe")
    if kind == "open_clip_bpe":
        return SimpleTokenizer(context_length=context_length)
    if kind == "hf":
        source = path or os.environ.get(TOKENIZER_ENV) or tokenizer_cfg["name"]
        try:
            return HFTokenizer(source, context_length=context_length, revision=tokenizer_cfg.get("revision"),
                                **tokenizer_cfg.get("kwargs", {}))
        except OSError as err:
            raise OSError(
                f"could not load the text tokenizer {source!r}: {err}. Without network access, download it "
                f"once (huggingface-cli download {tokenizer_cfg['name']}) and pass its folder as "
                f"tokenizer_path= or set {TOKENIZER_ENV}"
            ) from err
    raise ValueError(f"unknown tokenizer kind {kind!r}; use 'open_clip_bpe' or 'hf'")
