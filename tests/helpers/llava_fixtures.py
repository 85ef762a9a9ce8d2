"""Offline builders for the LLaVA tests: tiny random Llama / Qwen2 LLMs with real tokenizers,
synthetic images and LLaVA-format conversation JSON, and a patched LLaVA.

- Llama: a sentencepiece model trained here on a small corpus, saved as LLaVA expects
  (slow ``LlamaTokenizer``, ``legacy: true``; with ``legacy: false`` LLaVA's ``preprocess_v1``
  miscounts tokens and masks every label).
- Qwen2: the package's offline builder (:mod:`toklip_plugin.demo.tiny_llm`: a byte-level BPE trained
  here on :func:`corpus_lines`, Qwen2.5's special tokens) at :data:`LLM_SIZE`.
- LLaVA: the installed ``llava`` package, patched in place with ``toklip-patch llava`` (idempotent,
  under a lock so that parallel sessions do not race).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from toklip_plugin.demo.tiny_llm import build_tiny_qwen2

CAPTIONS = [
    "a red square on a white background",
    "a blue circle in the middle of a green field",
    "two yellow stripes over a dark sky",
    "a small black cat sitting next to a window",
]
QUESTIONS = ["What is in the image?", "Describe the picture briefly.", "What colour is it?", "Is there an animal?"]
ANSWERS = ["It shows a red square.", "A blue circle on green.", "The colour is yellow.", "Yes, a black cat."]
SIZES = [(96, 64), (64, 112), (128, 128), (80, 80)]  # (width, height); non-square ones exercise 'pad'
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
LLM_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512)


def corpus_lines() -> list[str]:
    chat = ["A chat between a curious human and an artificial intelligence assistant.",
            "The assistant gives helpful, detailed, and polite answers to the human's questions.",
            "USER: ASSISTANT: system user assistant You are a helpful assistant."]
    return chat + CAPTIONS + QUESTIONS + ANSWERS


# tokenizers --------------------------------------------------------------------------------
def build_llama_tokenizer(out_dir: Path):
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines() * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=400, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        minloglevel=2,
    )
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    return LlamaTokenizer(vocab_file=str(out_dir / "tokenizer.model"), legacy=True, add_bos_token=True)


# tiny LLMs ---------------------------------------------------------------------------------
def build_tiny_llm(kind: str, out_dir: Path) -> Path:
    """A random LLM of family ``kind`` ('llama' or 'qwen2') with its tokenizer, saved in ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if kind == "qwen2":
        return build_tiny_qwen2(out_dir, corpus_lines() * 20, **LLM_SIZE)
    if kind != "llama":
        raise ValueError(kind)
    tokenizer = build_llama_tokenizer(out_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **LLM_SIZE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# data --------------------------------------------------------------------------------------
def write_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate(SIZES):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        name = f"img{i}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def pretrain_records(images: list[str]) -> list[dict]:
    """LLaVA-Pretrain-558K's shape: one image, one instruction, one caption."""
    return [{"id": str(i), "image": image, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture briefly."},
        {"from": "gpt", "value": CAPTIONS[i]}]} for i, image in enumerate(images)]


def finetune_records(images: list[str]) -> list[dict]:
    """LLaVA-v1.5-mix-665K's shape: multi-turn conversations, and a text-only one."""
    records = [{"id": str(i), "image": image, "conversations": [
        {"from": "human", "value": f"{QUESTIONS[i]}\n<image>"},
        {"from": "gpt", "value": ANSWERS[i]},
        {"from": "human", "value": QUESTIONS[(i + 1) % 4]},
        {"from": "gpt", "value": ANSWERS[(i + 1) % 4]}]} for i, image in enumerate(images[:3])]
    records.append({"id": "text", "conversations": [
        {"from": "human", "value": QUESTIONS[0]}, {"from": "gpt", "value": CAPTIONS[0]}]})
    return records


def write_dataset(root: Path) -> dict[str, Path]:
    images = write_images(root / "images")
    paths = {"image_folder": root / "images", "pretrain": root / "pretrain.json", "finetune": root / "finetune.json"}
    paths["pretrain"].write_text(json.dumps(pretrain_records(images)))
    paths["finetune"].write_text(json.dumps(finetune_records(images)))
    return paths


# LLaVA ---------------------------------------------------------------------------------------
def require_patched_llava() -> Path:
    """The installed ``llava`` package, which setup (``make setup-all``: ``toklip-patch llava``) has patched
    once; the tests never patch site-packages themselves, they fail with the command to run instead."""
    import pytest

    from toklip_plugin.patching import find_target, patch_status

    target = find_target("llava", None)
    pending = [s.patch.name for s in patch_status("llava", target) if s.state != "applied"]
    if pending:
        pytest.fail(f"the installed LLaVA at {target} lacks {pending}: run `toklip-patch llava` "
                    "(make setup-all does) before the tests", pytrace=False)
    return target


def run_python(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a clean process (LLaVA's argument parsing and globals stay per run).

    The working directory is a scratch folder, so a stale ``*.egg-info`` in the repository cannot
    shadow the installed entry points.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode:
        raise AssertionError(f"python {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result
