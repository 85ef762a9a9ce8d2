"""Qwen2 / Qwen2.5 in LLaVA 1.2.2: the qwen_2 template, its label mask, the LLaVA Qwen2 class."""
from __future__ import annotations

import pytest
import torch
from helpers.llava_fixtures import QWEN_SYSTEM

REPLIES = ["A red square.", "Yes, a black cat."]
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": REPLIES[0]},
    {"from": "human", "value": "Is there an animal?"},
    {"from": "gpt", "value": REPLIES[1]},
]
EXPECTED_PROMPT = (
    QWEN_SYSTEM
    + "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n" + REPLIES[0] + "<|im_end|>\n"
    + "<|im_start|>user\nIs there an animal?<|im_end|>\n<|im_start|>assistant\n" + REPLIES[1] + "<|im_end|>\n"
)


@pytest.fixture
def qwen_template(monkeypatch):
    import llava.conversation as conversation_lib

    import toklip_plugin.integrations.llava.qwen2  # noqa: F401  (registers the template)

    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["qwen_2"])
    return conversation_lib.conv_templates["qwen_2"]


def unmasked_spans(labels: torch.Tensor) -> list[list[int]]:
    spans, current = [], []
    for label in labels.tolist():
        if label == -100:
            spans, current = (spans + [current] if current else spans), []
        else:
            current.append(label)
    return spans + [current] if current else spans


def test_template_renders_qwen_chat_format(qwen_template):
    conv = qwen_template.copy()
    for turn in CONVERSATION:
        conv.append_message(conv.roles[turn["from"] == "gpt"], turn["value"])
    assert conv.get_prompt() == EXPECTED_PROMPT


def test_llava_preprocess_leaves_exactly_the_assistant_replies_unmasked(qwen_template, tokenizer):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.train.train import preprocess

    out = preprocess([CONVERSATION], tokenizer, has_image=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids.shape == labels.shape
    spans = [tokenizer.decode(span) for span in unmasked_spans(labels)]
    assert spans == [reply + "<|im_end|>\n" for reply in REPLIES]
    cut = ids.tolist().index(IMAGE_TOKEN_INDEX)
    assert tokenizer.decode(ids[:cut]) + "<image>" + tokenizer.decode(ids[cut + 1:]) == EXPECTED_PROMPT


def test_text_only_sample_is_masked_the_same_way(qwen_template, tokenizer):
    from llava.train.train import preprocess

    text_only = [dict(turn, value=turn["value"].replace("<image>\n", "")) for turn in CONVERSATION]
    labels = preprocess([text_only], tokenizer, has_image=False)["labels"][0]
    assert [tokenizer.decode(span) for span in unmasked_spans(labels)] == [r + "<|im_end|>\n" for r in REPLIES]


def test_llava_qwen2_class_loads_every_qwen2_weight_including_qkv_biases(qwen2_dir):
    from transformers import Qwen2ForCausalLM

    from toklip_plugin.integrations.llava.qwen2 import LlavaQwen2ForCausalLM

    model, info = LlavaQwen2ForCausalLM.from_pretrained(qwen2_dir, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    plain = Qwen2ForCausalLM.from_pretrained(qwen2_dir)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.bias, plain.model.layers[0].self_attn.q_proj.bias)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_llava_finds_the_qwen2_class_for_base_and_saved_llava_checkpoints(qwen2_dir, tmp_path):
    from llava.model import LlavaLlamaForCausalLM
    from llava.plugins import find_language_model

    from toklip_plugin.integrations.llava.qwen2 import LlavaQwen2Config, LlavaQwen2ForCausalLM

    assert find_language_model(str(qwen2_dir), LlavaLlamaForCausalLM) is LlavaQwen2ForCausalLM
    LlavaQwen2Config(vocab_size=10, hidden_size=8, num_attention_heads=2, num_hidden_layers=1).save_pretrained(tmp_path)
    assert find_language_model(str(tmp_path), LlavaLlamaForCausalLM) is LlavaQwen2ForCausalLM
