"""Qwen's chat format (ChatML) as a LLaVA 1.2.2 conversation template, with its own label mask.

LLaVA 1.2.2 has no ChatML separator style, but its ``MPT`` style with the separator
``<|im_end|>\\n`` renders Qwen's prompt exactly::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\nWhat is this?<|im_end|>\\n<|im_start|>assistant\\nA cat.<|im_end|>\\n

LLaVA's own ``preprocess_mpt`` does its length arithmetic on strings and masks every label
(with only a printed warning) for this format, so the template builds input ids and labels
itself, segment by segment: everything is masked except each assistant reply and the
``<|im_end|>\\n`` that closes it (so the model learns to stop). ``toklip-patch llava`` makes
LLaVA's ``train.preprocess`` call a template's ``preprocess`` when it has one.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Sequence

import torch
from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX
from llava.conversation import Conversation, SeparatorStyle
from llava.mm_utils import tokenizer_image_token

__all__ = ["ChatMLConversation", "conv_qwen_2", "register_templates", "TEMPLATE_NAMES"]

TEMPLATE_NAMES = ("qwen_2", "qwen_1_5")  # LLaVA-NeXT's names for the same template


def _encode(text: str, tokenizer, has_image: bool) -> list[int]:
    """Token ids of a prompt segment; ``<image>`` becomes LLaVA's image placeholder when there is an image."""
    if has_image:
        return tokenizer_image_token(text, tokenizer)
    return tokenizer(text, add_special_tokens=False).input_ids


@dataclasses.dataclass
class ChatMLConversation(Conversation):
    """A ``Conversation`` rendered as ChatML that builds its own training labels."""

    def preprocess(self, sources: Sequence[list[dict]], tokenizer, has_image: bool = False) -> dict:
        """LLaVA-format conversations -> ``dict(input_ids=[...], labels=[...])``, one tensor each."""
        pairs = [self._ids_and_labels(source, partial(_encode, tokenizer=tokenizer, has_image=has_image))
                 for source in sources]
        return dict(input_ids=[torch.tensor(ids) for ids, _ in pairs],
                    labels=[torch.tensor(labels) for _, labels in pairs])

    def _ids_and_labels(self, source: list[dict], encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
        roles = {"human": self.roles[0], "gpt": self.roles[1]}
        if roles[source[0]["from"]] != self.roles[0]:
            source = source[1:]  # LLaVA's convention: drop a leading assistant turn
        ids: list[int] = []
        labels: list[int] = []

        def add(text: str, learn: bool) -> None:
            segment = encode(text)
            ids.extend(segment)
            labels.extend(segment if learn else [IGNORE_INDEX] * len(segment))

        add(self.system + self.sep, learn=False)
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            if role != self.roles[j % 2]:
                raise ValueError(f"turn {j} is from {sentence['from']!r}; turns must alternate human, gpt, ...")
            if role == self.roles[0]:
                add(role + sentence["value"] + self.sep + self.roles[1], learn=False)
            else:
                add(sentence["value"] + self.sep, learn=True)
        return ids, labels


conv_qwen_2 = ChatMLConversation(
    system="<|im_start|>system\nYou are a helpful assistant.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    messages=(),
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>\n",
    version="qwen",
)


def register_templates() -> None:
    """Add the Qwen template to LLaVA's ``conv_templates`` (``--version qwen_2``)."""
    for name in TEMPLATE_NAMES:
        conversation_lib.conv_templates.setdefault(name, conv_qwen_2)
