"""``toklip_llava``: lmms-eval's ``lmms`` API over a LLaVA model with a TokLIP vision tower.

lmms-eval 0.7.3 recommends chat models for new models (``docs/guides/model_guide.md``, "Model
Types"): ``TokLIPLlava`` (``is_simple = False``) reads each request's messages
(``doc_to_messages``), the default for ``--model toklip_llava``. lmms-eval builds chat requests for
generation tasks only (its ``ConfigurableMessagesTask.construct_requests``), so multiple-choice
(``loglikelihood``) tasks run on the legacy interface, ``TokLIPLlavaSimple`` (``is_simple = True``,
a prompt string plus ``doc_to_visual``), which lmms-eval picks under ``--force_simple``.
Both share the loading, the prompt template, the image processing, generation and scoring.

Requests are answered one at a time (LLaVA pads on the right, which breaks batched greedy
decoding), in request order; under ``accelerate launch`` each process takes one GPU and its
share of the requests. Unlike lmms-eval's built-in ``llava``, this model:

- loads through the plugin's ``load_llava_model`` (the TokLIP tower, Qwen2 LLMs, a dtype that
  works on the device: float32 on CPU, float16 on CUDA) and picks the prompt template from the
  LLM (``qwen_2`` or ``vicuna_v1``) unless ``conv_template`` is given, and turns chat messages
  into that template's conversation with one ``<image>`` placeholder per image, where the
  message puts the image (a system message replaces the template's system prompt);
- stops generation at the task's ``until`` strings;
- returns a real log-likelihood (the sum of the continuation tokens' log-probabilities) from
  ``loglikelihood``, so multiple-choice tasks rank answers the right way round.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ...precision import parse_dtype
from ...progress import ProgressBar

__all__ = ["TokLIPLlava", "TokLIPLlavaSimple", "llava_turns"]

logger = logging.getLogger(__name__)


def llava_turns(messages: list[dict]) -> tuple[Optional[str], list[tuple[str, str]], list]:
    """lmms-eval chat messages -> ``(system text or None, [(role, text), ...], images in order)``.

    Each image becomes one ``<image>`` placeholder where the message puts it (a message's parts are
    joined by newlines); the images are the messages' image items alone, so an ``<image>`` written
    inside a text part is dropped rather than left without an image.
    """
    from llava.constants import DEFAULT_IMAGE_TOKEN
    from lmms_eval.protocol import ChatMessages

    system, turns, images = None, [], []
    for message in ChatMessages(messages=messages).messages:
        parts = []
        for item in message.content:
            if item.type == "text":
                parts.append(item.text.replace(DEFAULT_IMAGE_TOKEN, "").strip())
            elif item.type == "image":
                parts.append(DEFAULT_IMAGE_TOKEN)
                images.append(_rgb_image(item.url))
            else:
                raise ValueError(f"toklip_llava reads text and images; a {message.role} message has "
                                 f"{item.type} content (use a task without {item.type} inputs)")
        text = "\n".join(part for part in parts if part)
        if message.role == "system":
            system = text
        else:
            turns.append((message.role, text))
    return system, turns, images


def _rgb_image(image):
    """A chat message's image (a PIL image or a file path) as an RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


class TokLIPLlava(lmms):
    """``--model toklip_llava --model_args pretrained=DIR[,device=cuda:0][,dtype=bfloat16][,conv_template=qwen_2]``.

    lmms-eval's chat interface: ``generate_until`` reads the request's messages.
    """

    is_simple = False

    def __init__(self, pretrained: str, device: Optional[str] = None, dtype: Optional[str] = None,
                 conv_template: Optional[str] = None, model_base: Optional[str] = None,
                 batch_size: int | str = 1, **unused) -> None:
        super().__init__()
        from ..llava import conversation_mode, load_llava_model

        torch_dtype = None if dtype is None else parse_dtype(dtype)  # a wrong name fails before any loading
        if unused:
            logger.warning("toklip_llava ignores model_args %s", sorted(unused))
        if str(batch_size) != "1":
            logger.warning("toklip_llava answers one request at a time; batch_size=%s is ignored", batch_size)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._join_accelerate_processes()
        self.tokenizer, self.model, self.image_processor, _ = load_llava_model(
            pretrained, self._device, torch_dtype, model_base)
        self.conv_template = conv_template or conversation_mode(self.model)
        from llava.conversation import conv_templates

        if self.conv_template not in conv_templates:
            raise ValueError(f"conv_template={self.conv_template!r} is not a LLaVA template; "
                             f"known: {', '.join(sorted(conv_templates))}")
        self.batch_size_per_gpu = 1

    def _join_accelerate_processes(self) -> None:
        """Under ``accelerate launch`` with several processes: one GPU per process, rank and world size for the evaluator."""
        from accelerate import Accelerator

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self.accelerator = accelerator
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # prompts and images --------------------------------------------------------------------
    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        return [v for v in (visuals or []) if v is not None]

    def _prompt_ids(self, context: str, visuals: list) -> torch.Tensor:
        """A legacy request's prompt (image tokens first, as LLaVA is trained) as input ids ``[1, L]``."""
        from llava.constants import DEFAULT_IMAGE_TOKEN

        if visuals and DEFAULT_IMAGE_TOKEN not in context:
            context = "\n".join([DEFAULT_IMAGE_TOKEN] * len(visuals) + [context])
        return self._conversation_ids([("user", context)])

    def _conversation_ids(self, turns: list[tuple[str, str]], system: Optional[str] = None) -> torch.Tensor:
        """``turns`` (user / assistant) in the LLaVA template, ending where the assistant answers, as ids ``[1, L]``."""
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.conversation import SeparatorStyle, conv_templates
        from llava.mm_utils import tokenizer_image_token

        conv = conv_templates[self.conv_template].copy()
        if system is not None:  # MPT-style templates (ChatML) carry the system header in the system text
            conv.system = f"<|im_start|>system\n{system}" if conv.sep_style == SeparatorStyle.MPT else system
        for role, text in turns:
            conv.append_message(conv.roles[1 if role == "assistant" else 0], text)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        return ids.unsqueeze(0).to(self.device)

    def _image_inputs(self, visuals: list) -> dict:
        if not visuals:
            return {}
        from llava.mm_utils import process_images

        images = process_images(visuals, self.image_processor, self.model.config)
        images = [i.to(self.device, self.model.dtype) for i in images] if isinstance(images, list) \
            else images.to(self.device, self.model.dtype)
        return {"images": images, "image_sizes": [v.size for v in visuals]}

    # the lmms API ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Chat requests: ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)``."""
        answers = []
        for _, doc_to_messages, gen_kwargs, doc_id, task, split in ProgressBar([r.args for r in requests], desc="toklip_llava"):
            system, turns, images = llava_turns(doc_to_messages(self.task_dict[task][split][doc_id]))
            answers.append(self._generate(self._conversation_ids(turns, system), self._image_inputs(images), dict(gen_kwargs)))
        return answers

    def _generate(self, input_ids: torch.Tensor, image_inputs: dict, gen_kwargs: dict) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = bool(gen_kwargs["do_sample"]) if "do_sample" in gen_kwargs else temperature > 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad, **image_inputs,
            do_sample=sample, temperature=temperature if sample and temperature > 0 else None,
            top_p=gen_kwargs.get("top_p") if sample else None, num_beams=int(gen_kwargs.get("num_beams", 1)),
            max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)), use_cache=True,
        )
        text = self.tokenizer.decode(output[0], skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text.strip()

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for context, continuation, doc_to_visual, doc_id, task, split in ProgressBar([r.args for r in requests], desc="toklip_llava"):
            if not isinstance(continuation, str):  # lmms-eval passes doc_to_target itself for some tasks
                continuation = continuation(self.task_dict[task][split][doc_id])
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            results.append(self._continuation_logprob(self._prompt_ids(context, visuals), continuation,
                                                      self._image_inputs(visuals)))
        return results

    def _continuation_logprob(self, context_ids: torch.Tensor, continuation: str, image_inputs: dict) -> tuple[float, bool]:
        """Sum of log p(continuation token | everything before it), and whether greedy decoding gives it."""
        cont = torch.tensor([self.tokenizer.encode(continuation, add_special_tokens=False)], device=self.device)
        if cont.numel() == 0:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        logits = self.model(input_ids=torch.cat([context_ids, cont], dim=1), **image_inputs).logits
        # image tokens expand inside the model, but the continuation stays the last cont.shape[1] positions
        logprobs = logits[0, -cont.shape[1] - 1:-1].float().log_softmax(dim=-1)
        picked = logprobs.gather(1, cont[0, :, None]).sum().item()
        return picked, bool((logprobs.argmax(dim=-1) == cont[0]).all())

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("toklip_llava does not implement multi-round generation; "
                                  "use tasks whose output_type is generate_until or loglikelihood")


class TokLIPLlavaSimple(TokLIPLlava):
    """lmms-eval's legacy ("simple") interface, for ``--force_simple`` runs (multiple-choice tasks)."""

    is_simple = True

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Legacy requests: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        answers = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in ProgressBar([r.args for r in requests], desc="toklip_llava"):
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            answers.append(self._generate(self._prompt_ids(context, visuals), self._image_inputs(visuals), dict(gen_kwargs)))
        return answers
