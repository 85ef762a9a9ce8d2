"""A tiny saved unified LLaVA-Qwen2 checkpoint (issue 14) for the tests that open one from disk.

Built as LLaVA's train.py builds the model before training (a random tiny Qwen2 from ``llava_fixtures``,
``initialize_vision_modules`` with ``--vision_tower toklip-tiny``, the generation set-up, the config fields
train.py sets), with random generation weights large enough that the prompt, the codes and TokLIP's
features all move the image-head logits, then saved with its tokenizer (BOI/EOI added) the way LLaVA saves
a model whose tower is frozen: without the tower's weights, which re-open from the tower's name.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from helpers.llava_fixtures import build_tiny_llm, require_patched_llava

TOWER_ARGS = SimpleNamespace(vision_tower="toklip-tiny", mm_vision_select_layer=-1, mm_vision_select_feature="patch",
                             pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="flat")
TRAIN_CONFIG = dict(image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
                    tokenizer_padding_side="right")


def _randomise_generation(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.image_head, model.code_embed, model.gen_fusion):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def save_tiny_unified(root: Path, seed: int = 0) -> Path:
    """``root/llava-unified-tiny``: a unified checkpoint with a tiny Qwen2 and a toklip-tiny tower."""
    require_patched_llava()
    from transformers import AutoTokenizer

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    llm = build_tiny_llm("qwen2", root / "tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(llm, use_fast=False)
    model = LlavaQwen2UnifiedForCausalLM.from_pretrained(llm, torch_dtype=torch.float32)
    model.get_model().initialize_vision_modules(TOWER_ARGS)
    model.initialize_generation_modules(tokenizer)
    _randomise_generation(model, seed)
    model.config.update(TRAIN_CONFIG)
    out = root / "llava-unified-tiny"
    model.save_pretrained(out, state_dict={k: v for k, v in model.state_dict().items() if "vision_tower" not in k})
    tokenizer.save_pretrained(out)
    return out
