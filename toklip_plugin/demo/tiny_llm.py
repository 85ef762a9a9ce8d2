"""A tiny random Qwen2 language model with a real tokenizer, built offline (no Hub, no downloads).

The tokenizer is a byte-level BPE trained here on a given corpus with Qwen2's pre-tokenizer regex
and Qwen2.5's special tokens (``<|endoftext|>`` pad, ``<|im_start|>``, ``<|im_end|>`` eos, no unk,
no bos), so LLaVA's ``qwen_2`` templates tokenize and mask it as they do Qwen2.5's. The model and
tokenizer are saved as a Hugging Face directory that LLaVA's ``train.py`` (``--model_name_or_path``)
and the unified-base conversion open. Used by ``toklip-demo unified`` and by the LLaVA tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

__all__ = ["QWEN_SPECIAL", "build_qwen2_tokenizer", "build_tiny_qwen2"]

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_qwen2_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """A ``Qwen2TokenizerFast`` whose byte-level BPE (``vocab_size`` entries at most) is trained on ``corpus``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def build_tiny_qwen2(out_dir: str | Path, corpus: Iterable[str], *, seed: int = 0, vocab_size: int = 400,
                     **size) -> Path:
    """A random ``Qwen2ForCausalLM`` of ``size`` (``Qwen2Config`` fields: ``hidden_size``, ``num_hidden_layers``,
    ...) initialised from ``seed``, with an untied text head and the tokenizer of ``corpus``, saved in ``out_dir``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_qwen2_tokenizer(corpus, vocab_size)
    ids = tokenizer.convert_tokens_to_ids(QWEN_SPECIAL)
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=ids[0], eos_token_id=ids[2],
                         tie_word_embeddings=False, **size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
