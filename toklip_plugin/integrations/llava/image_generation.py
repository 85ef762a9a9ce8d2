"""Drawing images from text with the unified LLaVA-Qwen2 (:mod:`.unified`).

``generate_image(model, tokenizer, ["a red circle on blue"])`` renders each caption with the
model's conversation template (``qwen_2``) as a user turn, opens the assistant turn with BOI and
samples the N codes of the image through the image head, then decodes them with the tower's VQ.

- **One KV cache** (Hugging Face ``past_key_values``) holds the prompt and every code; the TokLIP
  encoder keeps **its own** (:class:`~toklip_plugin.models.cached_encoder.CachedTokenEncoder`), so
  each new code costs one LLM step and one encoder step.
- **Classifier-free guidance**: the batch holds the conditional rows, then one unconditional row
  (empty caption) per prompt, left-padded with an attention mask; the image-head logits mix as
  ``uncond + scale * (cond - uncond)``. ``cfg_scale=None`` runs the conditional rows alone.
  Both rows of a prompt share its codes, so the encoder steps the conditional rows only.
- Prompts are batched; padding is masked, so a prompt gives the same logits alone or in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
from transformers import DynamicCache

from ...models.sampling import sample_logits
from .loading import conversation_mode

__all__ = ["generate_image", "generation_prompt", "prompt_batch", "sample_image_codes", "decode_image_codes",
           "GeneratedImages", "CodeSample"]


class GeneratedImages(NamedTuple):
    codes: torch.Tensor  # [B, N] VQ codes
    images: torch.Tensor  # [B, 3, S, S] in about [-1, 1]


@dataclass
class CodeSample:
    codes: torch.Tensor  # [B, N]
    logits: Optional[torch.Tensor] = None  # [rows, N, K]: every row's image-head logits per step, before guidance
    guided: Optional[torch.Tensor] = None  # [B, N, K]: the logits each code was drawn from (after guidance)


def generation_prompt(caption: str, conv_mode: str = "qwen_2") -> str:
    """The text before BOI: ``caption`` as the user turn, then the opened assistant turn ("" is unconditional)."""
    from llava.conversation import conv_templates

    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], caption)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def prompt_batch(model, tokenizer, prompts: Sequence[str], cfg: bool,
                 max_batch_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)`` ``[rows, L]`` ending in BOI: the prompts, then (CFG) as many
    unconditional rows."""
    model.require_generation()
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of captions")
    rows = len(prompts) * (2 if cfg else 1)
    if max_batch_size is not None and rows > max_batch_size:
        why = "a conditional and an unconditional row each, for classifier-free guidance" if cfg else "one each"
        fix = f"pass at most {max_batch_size // (2 if cfg else 1)} prompts per call" + (" or cfg_scale=None" if cfg else "")
        raise ValueError(f"{len(prompts)} prompts need {rows} rows ({why}) but max_batch_size is {max_batch_size}: {fix}")
    captions = list(prompts) + ([""] * len(prompts) if cfg else [])
    mode = conversation_mode(model)
    ids = [tokenizer(generation_prompt(c, mode), add_special_tokens=False).input_ids + [model.config.image_start_token_id]
           for c in captions]
    length = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (length - len(row)) + row for row in ids])
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in ids])
    return input_ids.to(model.device), mask.to(model.device)


def _check_context(model, attention_mask: torch.Tensor) -> None:
    longest = int(attention_mask.sum(1).max())
    needed = longest + model.config.image_tokens + 1  # the codes, then EOI
    context = model.config.max_position_embeddings
    if needed > context:
        raise ValueError(f"a prompt of {longest} tokens plus {model.config.image_tokens} image codes and the end-of-image "
                         f"token needs {needed} positions but the model's context is {context} "
                         "(max_position_embeddings): shorten the caption")


def _guided(logits: torch.Tensor, cfg_scale: Optional[float]) -> torch.Tensor:
    if cfg_scale is None:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def sample_image_codes(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       cfg_scale: Optional[float] = None, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, generator: Optional[torch.Generator] = None,
                       return_logits: bool = False) -> CodeSample:
    """N codes per prompt from a :func:`prompt_batch` (rows ``[cond; uncond]`` when ``cfg_scale`` is set)."""
    model.require_generation()
    _check_context(model, attention_mask)
    rows, n = len(input_ids), model.config.image_tokens
    prompts = rows // 2 if cfg_scale is not None else rows
    encoder = model.feedback_encoder()
    with torch.device(input_ids.device):
        encoder.setup_cache(prompts, encoder.codebook.dtype)
    cache, mask = DynamicCache(), attention_mask.long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    inputs = model.get_model().embed_tokens(input_ids)
    codes, steps = [], []
    for j in range(n):
        hidden = model.model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
        logits = model.image_head(hidden).float()
        guided = _guided(logits, cfg_scale)
        steps.append((logits, guided) if return_logits else None)
        code = sample_logits(guided, temperature, top_k, top_p, generator)
        codes.append(code)
        inputs = model.embed_code_step(encoder, code, j).repeat(rows // prompts, 1, 1)
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        positions = positions[:, -1:] + 1
    if not return_logits:
        return CodeSample(torch.cat(codes, dim=1))
    raw, guided = (torch.stack(s, dim=1) for s in zip(*steps))
    return CodeSample(torch.cat(codes, dim=1), raw, guided)


@torch.no_grad()
def decode_image_codes(model, codes: torch.Tensor) -> torch.Tensor:
    """Codes ``[B, N]`` -> images ``[B, 3, S, S]`` through the tower's VQ decoder."""
    toklip = model.vision_toklip()
    if toklip.vq.decoder is None:
        raise RuntimeError("the vision tower was loaded without its VQ decoder: build it from a unified config "
                           "(mm_vision_keep_decoder=True), e.g. re-open the checkpoint with load_llava_model")
    return toklip.decode_codes(codes.to(toklip.vq.quant_conv.weight.device))


def generate_image(model, tokenizer, prompts: Sequence[str], *, cfg_scale: Optional[float] = 4.0,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   generator: Optional[torch.Generator] = None, max_batch_size: Optional[int] = None) -> GeneratedImages:
    """Captions -> ``GeneratedImages(codes [B, N], images [B, 3, S, S])``; put the model in eval mode first.

    ``max_batch_size`` bounds the rows of one LLM batch (with CFG, two per prompt).
    """
    input_ids, mask = prompt_batch(model, tokenizer, prompts, cfg=cfg_scale is not None, max_batch_size=max_batch_size)
    sample = sample_image_codes(model, input_ids, mask, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generator)
    return GeneratedImages(sample.codes, decode_image_codes(model, sample.codes))
