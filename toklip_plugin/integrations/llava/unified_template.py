"""The ``qwen_2_unified`` conversation template: LLaVA-format data for the unified model (:mod:`.unified`).

It renders and masks exactly like ``qwen_2`` (:mod:`.chatml`) and adds the generation samples, in
LLaVA's JSON format with the target image in the ``"image"`` field and ``<image>`` as the whole
assistant turn::

    {"image": "cat.png", "conversations": [{"from": "human", "value": "a black cat"},
                                           {"from": "gpt", "value": "<image>"}]}

- ``<image>`` in a **user** turn is an image to understand: ``IMAGE_TOKEN_INDEX`` (-200), unlabelled.
- ``<image>`` in an **assistant** turn is an image to draw: ``IMAGE_GEN_TOKEN_INDEX`` (-201), labelled
  with itself (not ``IGNORE_INDEX``), which tells the model to learn its codes; the ``<|im_end|>`` after
  it is learned too, so the text head closes the turn after the image.
- **Caption dropout** for classifier-free guidance: with probability ``caption_dropout`` a
  text-to-image sample (one user turn, then the image) has its prompt replaced by the unconditional
  one that sampling uses, ``image_generation.generation_prompt("")``, token for token. The model sets
  the probability from its config (``gen_prompt_dropout``) when train.py sets it up.

LLaVA's ``preprocess_multimodal`` moves ``<image>`` to the start of whatever turn holds it; an
assistant turn that is ``<image>`` alone is unchanged by that.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import torch
from llava import conversation as conversation_lib
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .chatml import ChatMLConversation, conv_qwen_2
from .image_generation import generation_prompt

__all__ = ["UnifiedConversation", "conv_qwen_2_unified", "TEMPLATE_NAME", "IMAGE_GEN_TOKEN_INDEX",
           "register_unified_template"]

TEMPLATE_NAME = "qwen_2_unified"
IMAGE_GEN_TOKEN_INDEX = -201  # where a generated (target) image goes; LLaVA's IMAGE_TOKEN_INDEX is -200


@dataclasses.dataclass
class UnifiedConversation(ChatMLConversation):
    """ChatML with image placeholders in assistant turns (images to draw) and caption dropout."""

    caption_dropout: float = 0.0

    def preprocess(self, sources: Sequence[list[dict]], tokenizer, has_image: bool = False) -> dict:
        out = super().preprocess(sources, tokenizer, has_image=has_image)
        for source, ids, labels in zip(sources, out["input_ids"], out["labels"]):
            drawn = (ids == IMAGE_TOKEN_INDEX) & (labels != IGNORE_INDEX)  # a learned placeholder: an assistant turn
            ids[drawn] = labels[drawn] = IMAGE_GEN_TOKEN_INDEX
        rows = [self._maybe_drop_caption(source, ids, labels, tokenizer)
                for source, ids, labels in zip(sources, out["input_ids"], out["labels"])]
        return dict(input_ids=[ids for ids, _ in rows], labels=[labels for _, labels in rows])

    def _maybe_drop_caption(self, source: list[dict], ids: torch.Tensor, labels: torch.Tensor,
                            tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """With probability ``caption_dropout``, a text-to-image sample's prompt becomes the unconditional one."""
        drawn = (ids == IMAGE_GEN_TOKEN_INDEX).nonzero()
        if not (len(drawn) and _is_text_to_image(source) and random.random() < self.caption_dropout):
            return ids, labels
        at = int(drawn[0, 0])
        prompt = torch.tensor(tokenizer(generation_prompt("", TEMPLATE_NAME), add_special_tokens=False).input_ids)
        return torch.cat([prompt, ids[at:]]), torch.cat([torch.full_like(prompt, IGNORE_INDEX), labels[at:]])


def _is_text_to_image(source: list[dict]) -> bool:
    """One user turn without an image, then an assistant turn that is the image (LLaVA's leading gpt turn dropped)."""
    if source and source[0]["from"] == "gpt":
        source = source[1:]
    return (len(source) == 2 and DEFAULT_IMAGE_TOKEN not in source[0]["value"]
            and source[1]["value"].strip() == DEFAULT_IMAGE_TOKEN)


conv_qwen_2_unified = UnifiedConversation(**{f.name: getattr(conv_qwen_2, f.name)
                                             for f in dataclasses.fields(conv_qwen_2)})


def register_unified_template() -> None:
    """Add ``qwen_2_unified`` to LLaVA's ``conv_templates`` (``--version qwen_2_unified``)."""
    conversation_lib.conv_templates.setdefault(TEMPLATE_NAME, conv_qwen_2_unified)
