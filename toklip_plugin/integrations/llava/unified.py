"""One LLaVA-Qwen2 that reads and writes images in TokLIP tokens (TokLIP paper §1, §3.2, Fig. 2b).

**Understanding** is :class:`~.qwen2.LlavaQwen2ForCausalLM`'s: an image placeholder
(``IMAGE_TOKEN_INDEX``) becomes the TokLIP tower's semantic tokens through the projector.

**Generation** writes the tower's own VQ codes. A generated image is a span of one sequence::

    [..., text, BOI, c_0, ..., c_{N-1}, EOI, text, ...]

BOI/EOI are ordinary text tokens (``<|vision_start|>`` / ``<|vision_end|>``: present in Qwen2.5's
vocabulary, added otherwise; their ids are in the config). The text head predicts BOI; the hidden
state at BOI predicts ``c_0`` and the one at ``c_j`` predicts ``c_{j+1}`` through the **image head**
(``Linear(hidden, codebook)``); EOI is forced after N codes, so the text head is never used
inside a span and the image head never outside. The LLM reads code ``c_j`` as
``fusion(code_embed(c_j), f_j)`` where ``f_j`` is TokLIP's causal semantic feature of
``c_0..c_j`` (:mod:`toklip_plugin.models.fusion`; ``concat`` projects the feature into the LLM
width and starts out ignoring it).

The feedback encoder is the vision tower's own frozen TokLIP encoder and codebook, driven by a
:class:`~toklip_plugin.models.cached_encoder.CachedTokenEncoder` built on demand and never
registered as a submodule: the LLM's state dict holds no second copy of the tower (LLaVA re-builds
the tower from its name), and the training feature and the sampling step read the same weights.
It runs without gradients: generation trains the head, the code embedding and the fusion, never
the tokenizer. The tower keeps its VQ decoder (``mm_vision_keep_decoder``) so codes decode to pixels.

**Training forward** (``model(input_ids, labels=..., images=..., image_codes=...)``): input ids
hold ``IMAGE_TOKEN_INDEX`` (-200) for an image to understand and :data:`IMAGE_GEN_TOKEN_INDEX`
(-201) where a target image goes; the placeholder expands to ``BOI, c_0..c_{N-1}, EOI`` and its
codes are learned when the placeholder's label is not ``IGNORE_INDEX``. The loss is text
cross-entropy + ``gen_weight`` x image-code cross-entropy (both also on the output, for logging).

**Training with LLaVA's train.py**: ``--model_name_or_path`` is a converted base (:mod:`.unified_base`,
whose config says ``llava_qwen2_unified`` so that LLaVA picks this class) or a unified checkpoint,
``--version qwen_2_unified`` (:mod:`.unified_template`: generation samples, caption dropout); train.py's
last set-up call, ``initialize_vision_tokenizer``, also builds the generation modules and applies the
stage-1 freezing (:func:`prepare_generation_training`). Recipes: ``configs/llava/unified_*.sh``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...models.cached_encoder import CachedTokenEncoder
from ...models.fusion import FUSIONS
from ...models.toklip import TokLIP
from .qwen2 import LlavaQwen2Config, LlavaQwen2ForCausalLM, LlavaQwen2Model
from .unified_template import IMAGE_GEN_TOKEN_INDEX, TEMPLATE_NAME, UnifiedConversation, register_unified_template

__all__ = ["LlavaQwen2UnifiedConfig", "LlavaQwen2UnifiedForCausalLM", "UnifiedCausalLMOutput", "UnifiedInputs",
           "IMAGE_GEN_TOKEN_INDEX", "IMAGE_START_TOKEN", "IMAGE_END_TOKEN"]

IMAGE_START_TOKEN, IMAGE_END_TOKEN = "<|vision_start|>", "<|vision_end|>"


class LlavaQwen2UnifiedConfig(LlavaQwen2Config):
    """``LlavaQwen2Config`` plus the generation settings; the sizes are filled in from the tower by
    :meth:`LlavaQwen2UnifiedForCausalLM.initialize_generation_modules`."""

    model_type = "llava_qwen2_unified"

    def __init__(self, image_codebook_size: Optional[int] = None, image_tokens: Optional[int] = None,
                 image_feature_size: Optional[int] = None, gen_fusion: str = "concat", gen_weight: float = 1.0,
                 gen_prompt_dropout: float = 0.1, image_start_token_id: Optional[int] = None,
                 image_end_token_id: Optional[int] = None, **kwargs):
        kwargs.pop("model_type", None)  # a Qwen2 base's config.json says "qwen2"; this class is the unified model
        super().__init__(**kwargs)
        self.image_codebook_size = image_codebook_size  # K, the tower's VQ codebook
        self.image_tokens = image_tokens  # N = grid ** 2 of the tower
        self.image_feature_size = image_feature_size  # TokLIP encoder width (the fusion's feature input)
        self.gen_fusion = gen_fusion
        self.gen_weight = gen_weight
        self.gen_prompt_dropout = gen_prompt_dropout  # caption dropout for CFG, applied by the data path
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.mm_vision_keep_decoder = True  # read by the TokLIP tower: generated codes decode through its VQ

    @property
    def has_generation(self) -> bool:
        sizes = (self.image_codebook_size, self.image_tokens, self.image_feature_size,
                 self.image_start_token_id, self.image_end_token_id)
        return all(size is not None for size in sizes)


@dataclass
class UnifiedCausalLMOutput(CausalLMOutputWithPast):
    """``logits`` are the text head's; ``image_logits`` the image head's at every position."""

    image_logits: Optional[torch.FloatTensor] = None
    text_loss: Optional[torch.FloatTensor] = None
    image_loss: Optional[torch.FloatTensor] = None


@dataclass
class UnifiedInputs:
    """A spliced, right-padded batch: what the LLM body reads and what each head is trained on."""

    inputs_embeds: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T] bool
    position_ids: torch.Tensor  # [B, T]
    text_labels: torch.Tensor  # [B, T]: next-token targets of the text head (IGNORE_INDEX elsewhere)
    code_labels: torch.Tensor  # [B, T]: codes c_j at their own positions (IGNORE_INDEX elsewhere)


class LlavaQwen2UnifiedModel(LlavaQwen2Model):
    config_class = LlavaQwen2UnifiedConfig

    def initialize_vision_modules(self, model_args, fsdp=None):
        """LLaVA's, with a tower that keeps its VQ decoder (train.py's arguments cannot say so)."""
        model_args = copy.copy(model_args)
        model_args.mm_vision_keep_decoder = True
        return super().initialize_vision_modules(model_args, fsdp)


class LlavaQwen2UnifiedForCausalLM(LlavaQwen2ForCausalLM):
    config_class = LlavaQwen2UnifiedConfig
    llava_model_class = LlavaQwen2UnifiedModel

    def __init__(self, config: LlavaQwen2UnifiedConfig):
        super().__init__(config)
        if config.has_generation:
            self._build_generation_modules()

    # set-up -------------------------------------------------------------------------------
    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """LLaVA's, then the generation set-up: train.py calls this last, after the tower, the projector and
        their freezing, and before it builds the optimizer (see :func:`prepare_generation_training`)."""
        super().initialize_vision_tokenizer(model_args, tokenizer)
        prepare_generation_training(self, model_args, tokenizer)

    def initialize_generation_modules(self, tokenizer) -> None:
        """Add BOI/EOI to ``tokenizer`` (and the embeddings) and build the image head, code embedding and
        fusion sized for the loaded TokLIP tower. Call after ``initialize_vision_modules``."""
        toklip = self.vision_toklip()
        tokenizer.add_tokens([IMAGE_START_TOKEN, IMAGE_END_TOKEN], special_tokens=True)
        if len(tokenizer) > self.get_input_embeddings().num_embeddings:
            self.resize_token_embeddings(len(tokenizer))
        config = self.config
        config.image_start_token_id, config.image_end_token_id = tokenizer.convert_tokens_to_ids(
            [IMAGE_START_TOKEN, IMAGE_END_TOKEN])
        config.image_codebook_size = toklip.config.vq.codebook_size
        config.image_tokens = toklip.num_tokens
        config.image_feature_size = toklip.width
        self._build_generation_modules()

    def _build_generation_modules(self) -> None:
        config = self.config
        if config.gen_fusion not in FUSIONS:
            raise ValueError(f"unknown gen_fusion {config.gen_fusion!r}; choose one of {', '.join(FUSIONS)}")
        like = dict(device=self.lm_head.weight.device, dtype=self.lm_head.weight.dtype)
        self.image_head = nn.Linear(config.hidden_size, config.image_codebook_size, bias=False, **like)
        self.code_embed = nn.Embedding(config.image_codebook_size, config.hidden_size, **like)
        self.gen_fusion = FUSIONS[config.gen_fusion](config.hidden_size, config.image_feature_size).to(**like)
        self._init_weights(self.image_head)
        self._init_weights(self.code_embed)

    def _init_weights(self, module: nn.Module) -> None:
        """Qwen2's initialisation, except that a fusion keeps its own (it starts out as the plain code embedding)."""
        if isinstance(module, tuple(FUSIONS.values())):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def vision_toklip(self) -> TokLIP:
        """The loaded TokLIP model of the vision tower (its VQ, encoder and codebook)."""
        tower = self.get_vision_tower()
        if tower is None or not getattr(tower, "is_loaded", False):
            raise RuntimeError("the unified model needs its vision tower loaded: run initialize_vision_modules "
                               "(training) or open the checkpoint with load_pretrained_model / load_llava_model")
        if not hasattr(tower, "toklip"):
            raise ValueError(f"the unified model writes TokLIP codes and needs a TokLIP vision tower "
                             f"(--vision_tower toklip-...), not {getattr(tower, 'vision_tower_name', type(tower))!r}")
        return tower.toklip

    def require_generation(self) -> None:
        if not self.config.has_generation:
            raise RuntimeError("this model has no image head yet: call model.initialize_generation_modules(tokenizer) "
                               "after initialize_vision_modules (or open a trained unified checkpoint)")

    # the TokLIP feedback --------------------------------------------------------------------
    def feedback_encoder(self) -> CachedTokenEncoder:
        """The tower's TokLIP encoder and codebook, driven for the feedback (see the module docstring)."""
        toklip = self.vision_toklip()
        return CachedTokenEncoder(toklip.encoder, toklip.vq.quantize.codebook())

    def check_image_codes(self, codes: torch.Tensor) -> None:
        size, tokens = self.config.image_codebook_size, self.config.image_tokens
        if codes.ndim != 2 or codes.shape[1] != tokens:
            raise ValueError(f"image_codes must be [images, {tokens}] (the tower's grid), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise ValueError(f"image_codes must lie in [0, {size}) (the tower's VQ codebook), got min {int(codes.min())} "
                             f"max {int(codes.max())}: use codes made by this tower's VQ (toklip.tokenize)")

    def embed_image_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[M, N]`` -> LLM inputs ``[M, N, hidden]``: fusion of code embedding and causal TokLIP feature."""
        with torch.no_grad():
            features = self.feedback_encoder()(codes)
        return self.gen_fusion(self.code_embed(codes), features)

    def embed_code_step(self, encoder: CachedTokenEncoder, codes: torch.Tensor, position: int) -> torch.Tensor:
        """Code ``c_j`` ``[B, 1]`` at image position ``j`` -> LLM input ``[B, 1, hidden]``: one cached encoder step."""
        with torch.no_grad():
            feature = encoder.step(codes, torch.tensor([position], device=codes.device))
        return self.gen_fusion(self.code_embed(codes), feature)

    # text generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, images: Optional[torch.Tensor] = None,
                 image_sizes: Optional[list] = None, **kwargs):
        """LLaVA's text generation; the text head never emits BOI/EOI here (draw images with
        :func:`~.image_generation.generate_image`), so a text answer never opens a span it cannot fill."""
        if self.config.has_generation:
            span_tokens = {self.config.image_start_token_id, self.config.image_end_token_id}
            kwargs["suppress_tokens"] = sorted(span_tokens | set(kwargs.get("suppress_tokens") or ()))
        return super().generate(inputs, images=images, image_sizes=image_sizes, **kwargs)

    # training forward --------------------------------------------------------------------------
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
        image_codes: Optional[torch.LongTensor] = None,
    ) -> Union[tuple, CausalLMOutputWithPast]:
        """A whole-sequence pass (training, scoring) runs the unified splice; ``generate()``'s calls (given
        embeddings or a KV cache) are the Qwen2 LLaVA's."""
        if inputs_embeds is not None or past_key_values is not None:
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, images=images,
                image_sizes=image_sizes, return_dict=return_dict, cache_position=cache_position,
            )
        batch = self.prepare_unified_inputs(input_ids, attention_mask, labels, images, image_codes)
        out = self.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=use_cache, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden).float()
        image_logits = self.image_head(hidden).float() if self.config.has_generation else None
        text_loss = image_loss = loss = None
        if labels is not None:
            text_loss = _next_token_ce(logits, batch.text_labels)
            image_loss = _next_token_ce(image_logits, batch.code_labels) if image_logits is not None else 0 * text_loss
            loss = text_loss + self.config.gen_weight * image_loss
        return UnifiedCausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                     hidden_states=out.hidden_states, attentions=out.attentions,
                                     image_logits=image_logits, text_loss=text_loss, image_loss=image_loss)

    def prepare_unified_inputs(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                               labels: Optional[torch.Tensor], images: Optional[torch.Tensor],
                               image_codes: Optional[torch.Tensor] = None) -> UnifiedInputs:
        """Splice understanding features and generation spans into the text embeddings (see the module docstring).

        ``images`` is consumed in row-major order of the placeholders that take pixels (every
        ``IMAGE_TOKEN_INDEX``; every generation placeholder unless ``image_codes`` gives its codes),
        and, as in LLaVA's own splice, a row with none of them consumes one (dummy) image.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        rows = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]
        row_labels = ([lab[mask.bool()] for lab, mask in zip(labels, attention_mask)] if labels is not None
                      else [torch.full_like(ids, IGNORE_INDEX) for ids in rows])
        understanding, generation = self._placeholder_inputs(rows, images, image_codes)
        spliced = [self._splice_row(ids, lab, understanding, generation) for ids, lab in zip(rows, row_labels)]
        return self._pad(spliced)

    def _placeholder_inputs(self, rows: list[torch.Tensor], images: Optional[torch.Tensor],
                            image_codes: Optional[torch.Tensor]) -> tuple[Iterator, Iterator]:
        """Iterators over the understanding features ``[N_u, hidden]`` and the generation spans
        ``(codes [N], inputs [N, hidden])``, in placeholder order."""
        _refuse_anyres(images, getattr(self.config, "image_aspect_ratio", "square"))
        kinds = [ids[ids < 0].tolist() for ids in rows]
        unknown = {k for row in kinds for k in row} - {IMAGE_TOKEN_INDEX, IMAGE_GEN_TOKEN_INDEX}
        if unknown:
            raise ValueError(f"input_ids hold unknown negative ids {sorted(unknown)}: only IMAGE_TOKEN_INDEX "
                             f"({IMAGE_TOKEN_INDEX}) and IMAGE_GEN_TOKEN_INDEX ({IMAGE_GEN_TOKEN_INDEX}) are placeholders")
        takes_pixels = {IMAGE_TOKEN_INDEX} if image_codes is not None else {IMAGE_TOKEN_INDEX, IMAGE_GEN_TOKEN_INDEX}
        slots = [k for row in kinds for k in ([k for k in row if k in takes_pixels] or [None])]
        wanted = sum(k is not None for k in slots)
        if wanted and (images is None or len(images) != len(slots)):
            got = 0 if images is None else len(images)
            raise ValueError(f"the batch's placeholders need {len(slots)} images (one per pixel placeholder, one "
                             f"dummy per row without any) but {got} were given")
        picked = {kind: [i for i, k in enumerate(slots) if k == kind] for kind in takes_pixels}
        understanding = iter(())
        if picked.get(IMAGE_TOKEN_INDEX):
            understanding = iter(self.encode_images(images[picked[IMAGE_TOKEN_INDEX]]))
        return understanding, self._generation_spans(kinds, images, picked.get(IMAGE_GEN_TOKEN_INDEX), image_codes)

    def _generation_spans(self, kinds: list[list[int]], images, picked: Optional[list[int]],
                          image_codes: Optional[torch.Tensor]) -> Iterator:
        count = sum(row.count(IMAGE_GEN_TOKEN_INDEX) for row in kinds)
        if count == 0 and image_codes is None:
            return iter(())
        self.require_generation()
        if image_codes is None:
            toklip = self.vision_toklip()
            image_codes = toklip.tokenize(images[picked].to(device=toklip.vq.quant_conv.weight.device,
                                                             dtype=toklip.vq.quant_conv.weight.dtype))
        image_codes = image_codes.to(device=self.lm_head.weight.device, dtype=torch.long)
        self.check_image_codes(image_codes)
        if len(image_codes) != count:
            raise ValueError(f"the batch has {count} generation placeholders but image_codes has {len(image_codes)} rows")
        return zip(image_codes, self.embed_image_codes(image_codes))

    def _splice_row(self, ids: torch.Tensor, labels: torch.Tensor, understanding: Iterator,
                    generation: Iterator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One row's (embeddings ``[T, H]``, text labels ``[T]``, code labels ``[T]``)."""
        embed = self.get_model().embed_tokens
        text = embed(ids.clamp(min=0))  # placeholder rows are computed and dropped
        pieces, text_labels, code_labels = [], [], []

        def add(embeds: torch.Tensor, text_lab: torch.Tensor, code_lab: Optional[torch.Tensor] = None) -> None:
            pieces.append(embeds)
            text_labels.append(text_lab)
            code_labels.append(_ignored(len(embeds), ids) if code_lab is None else code_lab)

        start = 0
        for p in (ids < 0).nonzero().flatten().tolist():
            add(text[start:p], labels[start:p])
            if int(ids[p]) == IMAGE_TOKEN_INDEX:
                features = next(understanding)
                add(features, _ignored(len(features), ids))
            else:
                codes, inputs = next(generation)
                add(*self._span(embed, codes, inputs, learn=int(labels[p]) != IGNORE_INDEX))
            start = p + 1
        add(text[start:], labels[start:])
        return torch.cat(pieces), torch.cat(text_labels), torch.cat(code_labels)

    def _span(self, embed, codes: torch.Tensor, inputs: torch.Tensor, learn: bool):
        """``BOI, c_0..c_{N-1}, EOI``: BOI is the text head's target; each code the image head's; EOI is forced."""
        boi, eoi = self.config.image_start_token_id, self.config.image_end_token_id
        ends = embed(torch.tensor([boi, eoi], device=codes.device))
        n = len(codes)
        text_lab = _ignored(n + 2, codes)
        code_lab = _ignored(n + 2, codes)
        if learn:
            text_lab[0] = boi
            code_lab[1:-1] = codes
        return torch.cat([ends[:1], inputs.to(ends.dtype), ends[1:]]), text_lab, code_lab

    def _pad(self, rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> UnifiedInputs:
        """Right-pad the rows (LLaVA's truncation at ``tokenizer_model_max_length`` first)."""
        limit = getattr(self.config, "tokenizer_model_max_length", None)
        if limit is not None:
            rows = [_truncate(row, limit) for row in rows]
        length = max(len(embeds) for embeds, _, _ in rows)
        embeds = torch.stack([F.pad(e, (0, 0, 0, length - len(e))) for e, _, _ in rows])
        text = torch.stack([F.pad(t, (0, length - len(t)), value=IGNORE_INDEX) for _, t, _ in rows])
        codes = torch.stack([F.pad(c, (0, length - len(c)), value=IGNORE_INDEX) for _, _, c in rows])
        mask = torch.stack([torch.arange(length, device=embeds.device) < len(e) for e, _, _ in rows])
        positions = torch.arange(length, device=embeds.device).expand(len(rows), -1)
        return UnifiedInputs(embeds, mask, positions, text, codes)


def prepare_generation_training(model: LlavaQwen2UnifiedForCausalLM, model_args, tokenizer) -> None:
    """What LLaVA's train.py cannot say for the unified model, from its own arguments:

    - builds the image head, code embedding and fusion (and BOI/EOI) on a fresh base, or checks that the
      tokenizer of a unified checkpoint still has BOI/EOI at the config's ids;
    - stage 1 (``--freeze_backbone True``): the whole language model is frozen, the text head included, so
      the projector and the generation modules train (they are created after LLaVA's freezing);
    - ``--tune_mm_mlp_adapter`` is refused: LLaVA would save ``mm_projector.bin`` alone and drop the image head;
    - the data template must be ``qwen_2_unified``; it gets the config's caption dropout (``gen_prompt_dropout``).
    """
    from llava import conversation as conversation_lib

    if getattr(model_args, "tune_mm_mlp_adapter", False):
        raise ValueError("the unified model cannot train with --tune_mm_mlp_adapter: LLaVA then saves mm_projector.bin "
                         "alone and the image head would be lost; for stage 1 pass --freeze_backbone True instead "
                         "(projector and generation modules train, the whole model is saved)")
    template = conversation_lib.default_conversation
    if not isinstance(template, UnifiedConversation):
        raise ValueError(f"the unified model trains with --version {TEMPLATE_NAME} (generation samples and caption "
                         f"dropout), not {getattr(template, 'version', template)!r}")
    if model.config.has_generation:
        _check_span_tokens(model.config, tokenizer)
    else:
        model.initialize_generation_modules(tokenizer)
    if getattr(model_args, "freeze_backbone", False):
        model.lm_head.requires_grad_(False)
    conversation_lib.default_conversation = dataclasses.replace(template,
                                                                caption_dropout=model.config.gen_prompt_dropout)


def _check_span_tokens(config: LlavaQwen2UnifiedConfig, tokenizer) -> None:
    ids = tokenizer.convert_tokens_to_ids([IMAGE_START_TOKEN, IMAGE_END_TOKEN])
    if ids != [config.image_start_token_id, config.image_end_token_id]:
        raise ValueError(f"the tokenizer maps {IMAGE_START_TOKEN}/{IMAGE_END_TOKEN} to {ids} but the checkpoint was "
                         f"trained with {[config.image_start_token_id, config.image_end_token_id]}: use the tokenizer "
                         "saved with the checkpoint")


def _ignored(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), IGNORE_INDEX, dtype=torch.long, device=like.device)


def _truncate(row, limit: int):
    embeds, text, codes = row
    if len(embeds) > limit and bool((codes[limit:] != IGNORE_INDEX).any()):
        raise ValueError(f"a sequence of {len(embeds)} positions (images expanded) is cut at tokenizer_model_max_length "
                         f"{limit}, which drops learned image codes: raise --model_max_length or shorten the sample")
    return embeds[:limit], text[:limit], codes[:limit]


def _refuse_anyres(images, aspect_ratio: str) -> None:
    if str(aspect_ratio).startswith("anyres") or isinstance(images, list) or (images is not None and images.ndim == 5):
        raise ValueError("the unified model takes one [3, S, S] image per placeholder: set image_aspect_ratio to "
                         f"'pad' or 'square' (got {aspect_ratio!r}; anyres tiles are not supported)")


def _next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position t's logits against the label at t + 1 (0 when nothing is labelled)."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


AutoConfig.register(LlavaQwen2UnifiedConfig.model_type, LlavaQwen2UnifiedConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwen2UnifiedConfig, LlavaQwen2UnifiedForCausalLM, exist_ok=True)
register_unified_template()
