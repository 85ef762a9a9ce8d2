"""LLaVA with a Qwen2 / Qwen2.5 language model (the paper's Qwen2.5-7B-Instruct), for LLaVA 1.2.2.

LLaVA 1.2.2 only knows Llama, Mistral and MPT. This module adds, the way its own
``llava_llama.py`` does for Llama (and LLaVA-NeXT's ``llava_qwen.py`` for Qwen):

- ``LlavaQwen2Config`` (``model_type="llava_qwen2"``), ``LlavaQwen2Model`` and
  ``LlavaQwen2ForCausalLM``, registered with transformers' ``AutoConfig`` /
  ``AutoModelForCausalLM`` when this module is imported;
- the ``qwen_2`` conversation template (``chatml.py``), registered at the same time.

LLaVA finds the class through the ``llava.language_models`` entry point ``qwen2`` (see
``toklip-patch llava``): ``train.py`` picks it when ``--model_name_or_path`` is a Qwen2
checkpoint, and ``load_pretrained_model`` when the saved config says ``llava_qwen2``.
Qwen2.5 has no unk token; the patched ``train.py`` then keeps Qwen's pad token
``<|endoftext|>`` instead of padding with None.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from transformers.modeling_outputs import CausalLMOutputWithPast

from .chatml import register_templates

__all__ = ["LlavaQwen2Config", "LlavaQwen2Model", "LlavaQwen2ForCausalLM"]


class LlavaCausalLMMixin(LlavaMetaForCausalLM):
    """LLaVA's multimodal ``forward`` / ``generate`` for any Hugging Face causal LM listed after it.

    Images are spliced into the input embeddings by ``prepare_inputs_labels_for_multimodal``;
    everything else is the language model's own (``super()``). Only named arguments are taken,
    so the Trainer and ``generate`` do not start passing loss or logits kwargs.
    """

    def get_model(self):
        return self.model

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        images: Optional[torch.FloatTensor] = None,
        image_sizes: Optional[list[list[int]]] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
    ) -> Union[tuple, CausalLMOutputWithPast]:
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
                )
            )
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=return_dict, cache_position=cache_position,
        )

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, images: Optional[torch.Tensor] = None,
                 image_sizes: Optional[list] = None, **kwargs):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported; pass token ids and images")
        if images is not None:
            inputs, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes=image_sizes
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask,
                                inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs
        )
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs


class LlavaQwen2Config(Qwen2Config):
    model_type = "llava_qwen2"


class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwen2Config


class LlavaQwen2ForCausalLM(LlavaCausalLMMixin, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config
    llava_model_class = LlavaQwen2Model  # the inner model (LLM body + tower + projector); subclasses may extend it

    def __init__(self, config: Qwen2Config):
        # Qwen2ForCausalLM.__init__ would build a plain Qwen2Model first; build the LLaVA one only
        super(Qwen2ForCausalLM, self).__init__(config)
        self.model = self.llava_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(LlavaQwen2Config.model_type, LlavaQwen2Config, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwen2Config, LlavaQwen2ForCausalLM, exist_ok=True)
register_templates()
