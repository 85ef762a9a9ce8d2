"""Open a trained LLaVA checkpoint whose vision tower is TokLIP (Llama/Vicuna or Qwen2 LLM).

``load_llava_model`` wraps LLaVA's own ``load_pretrained_model`` and fixes what it gets wrong
for non-LLaVA-repo use: it needs ``'llava'`` in the model name (taken from the directory
name), always loads fp16 and leaves the vision tower's device and dtype alone on CPU. Here
the dtype defaults to float32 on CPU and float16 on CUDA, and the tower follows the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["load_llava_model", "conversation_mode", "require_patched_llava"]


def require_patched_llava() -> None:
    """Raise with the fix when the installed LLaVA lacks our patches (no plugin lookup)."""
    try:
        import llava.plugins  # noqa: F401  (added by toklip-patch llava)
    except ImportError as err:
        raise RuntimeError(
            "LLaVA is not installed or not patched for plugins: run `pip install --no-deps "
            "llava-torch==1.2.2.post1` and then `toklip-patch llava`"
        ) from err


def _model_name(model_path: str) -> str:
    from llava.mm_utils import get_model_name_from_path

    name = get_model_name_from_path(model_path)
    return name if "llava" in name.lower() else f"llava-{name}"


def load_llava_model(
    model_path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    model_base: Optional[str] = None,
):
    """``(tokenizer, model, image_processor, context_len)`` for a LLaVA checkpoint, in eval mode.

    ``device``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``dtype``: default float32 on CPU,
    float16 on CUDA. ``model_base`` is LLaVA's (LoRA / projector-only checkpoints).
    """
    require_patched_llava()
    from llava.model.builder import load_pretrained_model

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.float16
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        str(model_path), model_base, _model_name(str(model_path)),
        device_map=str(device), device=str(device), torch_dtype=dtype,
    )
    model.get_vision_tower().to(device=device, dtype=dtype)
    return tokenizer, model.eval(), image_processor, context_len


def conversation_mode(model) -> str:
    """The ``conv_templates`` name to prompt ``model`` with: ``qwen_2`` for Qwen2 (and the unified Qwen2),
    ``vicuna_v1`` otherwise."""
    return "qwen_2" if model.config.model_type.startswith("llava_qwen2") else "vicuna_v1"
