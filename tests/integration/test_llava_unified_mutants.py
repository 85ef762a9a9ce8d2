"""The unified LLaVA-Qwen2 (issue 14) where mutation testing found it unchecked (issue 15, item 3).

The model here has a tiny Qwen2 and a TokLIP tower of 32 px: toklip-tiny's layers with a 2 x 2 grid, so an image
is 4 codes and a whole sampling run takes a fraction of a second. Every expectation is built another way: the loss
by hand from the returned logits, sampling against one teacher-forced forward, the embedding path against
the Qwen2 LLaVA's own forward, the prompt layout and the template's caption dropout token by token.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from test_llava_unified import (
    CAPTIONS,
    teacher_forced_image_logits,
    text_ids,
    tower_args,
)

import toklip_plugin as tp

IGNORE, UNDERSTAND, DRAW = -100, -200, -201


@pytest.fixture(scope="module")
def small_tower(tmp_path_factory) -> str:
    """``toklip:DIR``: a saved toklip-tiny at 32 px (4 codes an image) that the tower loads by its path."""
    config = dataclasses.replace(tp.resolve_config("toklip-tiny"), image_size=32, name="toklip-tiny-32")
    folder = tmp_path_factory.mktemp("toklip-32")
    tp.create_model(config, seed=0).save_pretrained(folder)
    return f"toklip:{folder}"


def build(qwen2_dir, tower: str, generation: bool = True, randomise: bool = True, dtype=torch.float32, seed: int = 0):
    """A unified model set up as train.py does; ``randomise``: the generation modules (the fusion's feature part
    included) and the BOI/EOI rows are drawn at random so that features, codes and span tokens move the logits."""
    from transformers import AutoTokenizer

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen2_dir, use_fast=False)
    model = LlavaQwen2UnifiedForCausalLM.from_pretrained(qwen2_dir, torch_dtype=dtype)
    model.get_model().initialize_vision_modules(tower_args(vision_tower=tower))
    if generation:
        model.initialize_generation_modules(tokenizer)
    if generation and randomise:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in [*model.image_head.parameters(), *model.code_embed.parameters(), *model.gen_fusion.parameters()]:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
            span = [model.config.image_start_token_id, model.config.image_end_token_id]
            model.get_model().embed_tokens.weight[span] = 0.3 * torch.randn(2, model.config.hidden_size,
                                                                             generator=generator)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def small(qwen2_dir, small_tower):
    return build(qwen2_dir, small_tower)


def pixels(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def random_codes(model, rows: int, seed: int = 0) -> torch.Tensor:
    k, n = model.config.image_codebook_size, model.config.image_tokens
    return torch.randint(0, k, (rows, n), generator=torch.Generator().manual_seed(seed))


# the config --------------------------------------------------------------------------------------
def test_a_unified_config_defaults_to_concat_weight_one_dropout_0_1_and_keeps_the_vq_decoder():
    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedConfig

    config = LlavaQwen2UnifiedConfig()
    assert (config.gen_fusion, config.gen_weight, config.gen_prompt_dropout) == ("concat", 1.0, 0.1)
    assert config.mm_vision_keep_decoder and not config.has_generation
    sizes = ("image_codebook_size", "image_tokens", "image_feature_size", "image_start_token_id", "image_end_token_id")
    assert [getattr(config, name) for name in sizes] == [None] * 5
    from_qwen2 = LlavaQwen2UnifiedConfig(model_type="qwen2", hidden_size=48)  # a Qwen2 base's config.json
    assert from_qwen2.to_dict()["model_type"] == "llava_qwen2_unified" and from_qwen2.hidden_size == 48


@pytest.mark.parametrize("missing", ["image_codebook_size", "image_tokens", "image_feature_size",
                                     "image_start_token_id", "image_end_token_id"])
def test_generation_needs_every_size_and_both_span_token_ids(missing):
    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedConfig

    sizes = dict(image_codebook_size=16, image_tokens=4, image_feature_size=8, image_start_token_id=0,
                 image_end_token_id=1)  # id 0 is a real token id
    assert LlavaQwen2UnifiedConfig(**sizes).has_generation
    assert not LlavaQwen2UnifiedConfig(**{**sizes, missing: None}).has_generation


# set-up --------------------------------------------------------------------------------------------
def test_generation_sizes_come_from_the_tower_and_the_span_tokens_are_special(small):
    model, tokenizer = small
    toklip = model.vision_toklip()
    config = model.config
    assert (config.image_codebook_size, config.image_tokens, config.image_feature_size) == (1024, 4, toklip.width)
    span = [config.image_start_token_id, config.image_end_token_id]
    assert span == tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer) > max(span)
    assert tokenizer.decode(span + text_ids(tokenizer, "a cat"), skip_special_tokens=True) == "a cat"


def test_generation_modules_are_bias_free_in_the_llms_dtype_with_qwen2s_init_and_an_identity_fusion(
        qwen2_dir, small_tower):
    model, _ = build(qwen2_dir, small_tower, randomise=False, dtype=torch.bfloat16)
    std = model.config.initializer_range  # Qwen2's _init_weights: normal(0, initializer_range)
    assert model.image_head.bias is None
    for module in (model.image_head, model.code_embed, model.gen_fusion.proj):
        assert module.weight.dtype == torch.bfloat16
    for module in (model.image_head, model.code_embed):
        assert 0.8 * std < float(module.weight.detach().float().std()) < 1.2 * std
    code = torch.randn(2, 3, model.config.hidden_size).bfloat16()
    assert torch.equal(model.gen_fusion(code, torch.randn(2, 3, model.config.image_feature_size)), code)


def test_each_fusion_setting_builds_its_fusion_and_an_unknown_one_names_the_choices(small):
    from toklip_plugin.models.fusion import FUSIONS

    model, _ = small
    saved = (model.config.gen_fusion, model.image_head, model.code_embed, model.gen_fusion)
    try:
        for name, fusion in FUSIONS.items():
            model.config.gen_fusion = name
            model._build_generation_modules()
            assert type(model.gen_fusion) is fusion
        model.config.gen_fusion = "gated"
        with pytest.raises(ValueError, match="unknown gen_fusion 'gated'; choose one of concat, sum, weighted_sum"):
            model._build_generation_modules()
    finally:
        model.config.gen_fusion, model.image_head, model.code_embed, model.gen_fusion = saved


def test_without_a_tower_or_an_image_head_the_errors_say_what_to_run(qwen2_dir, small_tower):
    from toklip_plugin.integrations.llava.image_generation import prompt_batch
    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    bare = LlavaQwen2UnifiedForCausalLM.from_pretrained(qwen2_dir, torch_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="needs its vision tower loaded: run initialize_vision_modules"):
        bare.vision_toklip()
    model, tokenizer = build(qwen2_dir, small_tower, generation=False)
    with pytest.raises(RuntimeError, match=r"no image head yet: call model.initialize_generation_modules\(tokenizer\)"):
        prompt_batch(model, tokenizer, CAPTIONS, cfg=False)


def test_a_tower_not_loaded_or_not_toklip_is_refused_naming_what_to_do(small):
    """``vision_toklip``: a tower not loaded yet gets the load advice; a loaded tower that is not TokLIP (LLaVA's
    ``vq-16`` baseline tower) is named, since the unified model writes TokLIP's codes."""
    from types import SimpleNamespace

    from toklip_plugin.integrations.llava.tower import VQ16VisionTower

    model, _ = small
    inner, name = model.get_model(), "vq-16-32:/nowhere/vq.pt"
    toklip_tower, vq16 = inner.vision_tower, VQ16VisionTower(name, SimpleNamespace(), delay_load=True)
    try:
        inner.vision_tower = vq16
        with pytest.raises(RuntimeError, match="needs its vision tower loaded: run initialize_vision_modules"):
            model.vision_toklip()
        vq16.is_loaded = True  # as load_model leaves it; its weights are never read here
        with pytest.raises(ValueError, match=rf"needs a TokLIP vision tower \(--vision_tower toklip-...\), not '{name}'$"):
            model.vision_toklip()
    finally:
        inner.vision_tower = toklip_tower
    assert model.vision_toklip() is toklip_tower.toklip


# image codes --------------------------------------------------------------------------------------
def test_image_codes_must_be_one_grid_per_image_in_the_codebook(small):
    model, _ = small
    k = model.config.image_codebook_size
    model.check_image_codes(torch.tensor([[0, k - 1, 5, 6]]))  # both ends of the codebook are codes
    model.check_image_codes(torch.zeros(0, 4, dtype=torch.long))  # no image at all
    for shape in [(4,), (1, 5), (1, 3)]:
        with pytest.raises(ValueError, match=re.escape(f"image_codes must be [images, 4] (the tower's grid), got {shape}")):
            model.check_image_codes(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"lie in \[0, {k}\) \(the tower's VQ codebook\), got min -1 max {k - 1}: "
                                         r"use codes made by this tower's VQ \(toklip.tokenize\)"):
        model.check_image_codes(torch.tensor([[-1, k - 1, 0, 0]]))


def test_image_code_inputs_fuse_the_code_embedding_with_toklips_causal_features(small):
    model, _ = small
    codes = random_codes(model, 3, seed=1)
    with torch.no_grad():
        expected = model.gen_fusion(model.code_embed(codes), model.vision_toklip().encode_codes(codes))
        torch.testing.assert_close(model.embed_image_codes(codes), expected)


# text generation -----------------------------------------------------------------------------------
def test_text_generation_also_keeps_the_tokens_the_caller_suppresses(small):
    model, tokenizer = small
    ids = torch.tensor([text_ids(tokenizer, "Describe the picture briefly.")])
    with torch.no_grad():
        favourite = int(model(input_ids=ids).logits[0, -1].argmax())
    out = model.generate(ids, do_sample=False, max_new_tokens=1, min_new_tokens=1, suppress_tokens=[favourite],
                         pad_token_id=tokenizer.pad_token_id)
    assert int(out[0, -1]) not in (favourite, model.config.image_start_token_id, model.config.image_end_token_id)


def test_generate_answers_from_the_image_it_is_given(small):
    model, tokenizer = small
    ids = torch.tensor([text_ids(tokenizer, "<|im_start|>user\n") + [UNDERSTAND] + text_ids(tokenizer, "What is it?")])
    answers = []
    for seed in (1, 2):
        image = pixels(1, seed=seed)
        with torch.no_grad():
            logits = model(input_ids=ids, images=image).logits[0, -1]
        logits[[model.config.image_start_token_id, model.config.image_end_token_id]] = float("-inf")
        out = model.generate(ids, images=image, do_sample=False, max_new_tokens=1, pad_token_id=tokenizer.pad_token_id)
        assert int(out[0, -1]) == int(logits.argmax())
        answers.append(logits)
    assert not torch.allclose(*answers)  # the image decides


# the forward with embeddings or a cache: the Qwen2 LLaVA's -------------------------------------------
def test_with_embeddings_or_a_cache_the_forward_is_the_qwen2_llavas_for_every_argument(small):
    from transformers import DynamicCache

    from toklip_plugin.integrations.llava.qwen2 import LlavaQwen2ForCausalLM

    model, tokenizer = small
    ids, mask, _ = padded([(text_ids(tokenizer, c), []) for c in CAPTIONS], tokenizer.pad_token_id)
    embeds = model.get_model().embed_tokens(ids).detach()
    args = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand(2, -1) + 3,
                labels=ids.masked_fill(mask == 0, IGNORE), output_hidden_states=True, use_cache=True)
    with torch.no_grad():
        ours, reference = model(**args), LlavaQwen2ForCausalLM.forward(model, **args)
        torch.testing.assert_close(ours.loss, reference.loss, rtol=0, atol=0)
        torch.testing.assert_close(ours.logits, reference.logits, rtol=0, atol=0)
        assert len(ours.hidden_states) == model.config.num_hidden_layers + 1
        torch.testing.assert_close(ours.hidden_states[-1], reference.hidden_states[-1], rtol=0, atol=0)
        as_tuple = model(inputs_embeds=embeds, return_dict=False)
        assert isinstance(as_tuple, tuple)
        attended = model(inputs_embeds=embeds, use_cache=False, output_attentions=True)
        assert attended.past_key_values is None and len(attended.attentions) == model.config.num_hidden_layers
        cache = DynamicCache()
        model(input_ids=ids[:1, :-1], past_key_values=cache, use_cache=True)
        last = model(input_ids=ids[:1, -1:], past_key_values=cache, use_cache=True,
                     cache_position=torch.tensor([ids.shape[1] - 1])).logits
        torch.testing.assert_close(last[0, -1], model(input_ids=ids[:1]).logits[0, -1], rtol=0, atol=1e-5)
        seen = torch.tensor([text_ids(tokenizer, "look") + [UNDERSTAND] + text_ids(tokenizer, "here")])
        cached = model(input_ids=seen, images=pixels(1, seed=2), past_key_values=DynamicCache(), use_cache=True)
        torch.testing.assert_close(cached.logits, model(input_ids=seen, images=pixels(1, seed=2)).logits,
                                   rtol=0, atol=1e-5)  # a prefill into a cache splices the image too


# the training forward ---------------------------------------------------------------------------------
def mixed_rows(tokenizer) -> list[tuple[list[int], list[int]]]:
    """Row 0 understands an image and answers; row 1 draws an image from a caption; row 2 is text only."""
    user, question = text_ids(tokenizer, "<|im_start|>user\n"), text_ids(tokenizer, "What is it?<|im_end|>\n<|im_start|>assistant\n")
    reply, close = text_ids(tokenizer, "A red square.<|im_end|>\n"), text_ids(tokenizer, "<|im_end|>\n")
    caption = text_ids(tokenizer, "<|im_start|>user\na blue circle<|im_end|>\n<|im_start|>assistant\n")
    return [(user + [UNDERSTAND] + question + reply, [IGNORE] * (len(user) + 1 + len(question)) + reply),
            (caption + [DRAW] + close, [IGNORE] * len(caption) + [DRAW] + close),
            (question + reply, [IGNORE] * len(question) + reply)]


def padded(rows, pad: int):
    length = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [pad] * (length - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [IGNORE] * (length - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r, _ in rows])
    return ids, mask, labels


def test_the_loss_is_text_ce_plus_gen_weight_times_code_ce_by_hand(small):
    model, tokenizer = small
    rows = mixed_rows(tokenizer)
    ids, mask, labels = padded(rows, tokenizer.pad_token_id)
    images = pixels(3, seed=4)  # row 0's image, row 1's target image, row 2's dummy
    n = model.config.image_tokens
    weight = model.config.gen_weight
    model.config.gen_weight = 0.25
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    finally:
        model.config.gen_weight = weight
    reply = [t for t in rows[0][1] if t != IGNORE]
    q0 = len(rows[0][0]) - len(reply) + n - 1  # row 0: the image is n positions; the reply is last
    p = rows[1][1].index(DRAW)  # row 1: BOI at p, codes p+1..p+n, EOI, then the closing tokens
    close = rows[1][1][p + 1:]
    reply2 = [t for t in rows[2][1] if t != IGNORE]
    q2 = len(rows[2][0]) - len(reply2)
    targets = [(0, q0 + i, t) for i, t in enumerate(reply)] + [(1, p, model.config.image_start_token_id)]
    targets += [(1, p + n + 2 + i, t) for i, t in enumerate(close)] + [(2, q2 + i, t) for i, t in enumerate(reply2)]
    logits = torch.stack([out.logits[b, q - 1] for b, q, _ in targets])
    text = F.cross_entropy(logits, torch.tensor([t for _, _, t in targets]))
    codes = model.vision_toklip().tokenize(images[1:2])[0]
    image = F.cross_entropy(out.image_logits[1, p:p + n], codes)
    torch.testing.assert_close(out.text_loss, text)
    torch.testing.assert_close(out.image_loss, image)
    torch.testing.assert_close(out.loss, text + 0.25 * image)


def test_a_model_without_an_image_head_trains_on_text_alone(qwen2_dir, small_tower):
    model, tokenizer = build(qwen2_dir, small_tower, generation=False)
    ids, mask, labels = padded(mixed_rows(tokenizer)[2:], tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        expected = F.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    assert out.image_logits is None and float(out.image_loss) == 0.0
    torch.testing.assert_close(out.loss, expected)
    with torch.no_grad():  # nothing labelled: every loss is 0
        empty = model(input_ids=ids, attention_mask=mask, labels=torch.full_like(labels, IGNORE))
    assert empty.loss.item() == empty.text_loss.item() == empty.image_loss.item() == 0.0


def test_a_batch_with_nothing_labelled_has_zero_losses_that_still_backpropagate(small):
    model, tokenizer = small
    ids, mask, _ = padded(mixed_rows(tokenizer)[1:2], tokenizer.pad_token_id)
    out = model(input_ids=ids, attention_mask=mask, labels=torch.full_like(ids, IGNORE),
                image_codes=random_codes(model, 1))
    assert out.text_loss.item() == out.image_loss.item() == out.loss.item() == 0.0
    model.zero_grad(set_to_none=True)
    out.loss.backward()  # a zero gradient, but one (a DDP rank whose batch has no labels still joins the step)
    assert not model.image_head.weight.grad.any() and not model.lm_head.weight.grad.any()
    model.zero_grad(set_to_none=True)


def test_an_unlabelled_generation_placeholder_feeds_its_span_without_targets(small):
    model, tokenizer = small
    (ids, _), n = mixed_rows(tokenizer)[1], model.config.image_tokens
    p = ids.index(DRAW)
    codes = random_codes(model, 1, seed=3)
    with torch.no_grad():
        learned = model.prepare_unified_inputs(torch.tensor([ids]), None, torch.tensor([ids]), None, codes)
        unlabelled = model.prepare_unified_inputs(torch.tensor([ids]), None, torch.full((1, len(ids)), IGNORE), None,
                                                  codes)
    torch.testing.assert_close(unlabelled.inputs_embeds, learned.inputs_embeds)
    assert unlabelled.code_labels.eq(IGNORE).all() and unlabelled.text_labels.eq(IGNORE).all()
    assert learned.code_labels[0, p + 1:p + 1 + n].tolist() == codes[0].tolist()


def test_a_generation_placeholder_without_codes_reads_its_image_through_the_tower(small):
    model, tokenizer = small
    ids, mask, labels = padded(mixed_rows(tokenizer)[1:2], tokenizer.pad_token_id)
    image = pixels(1, seed=6)
    with torch.no_grad():
        from_pixels = model(input_ids=ids, attention_mask=mask, labels=labels, images=image)
        from_codes = model(input_ids=ids, attention_mask=mask, labels=labels,
                           image_codes=model.vision_toklip().tokenize(image))
    torch.testing.assert_close(from_pixels.image_logits, from_codes.image_logits, rtol=0, atol=0)
    torch.testing.assert_close(from_pixels.loss, from_codes.loss, rtol=0, atol=0)


def test_a_row_without_an_image_consumes_a_dummy_image_as_in_llava_and_the_count_is_checked(small):
    model, tokenizer = small
    rows = mixed_rows(tokenizer)
    ids, mask, _ = padded([rows[0], rows[2]], tokenizer.pad_token_id)
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, images=pixels(2, seed=7)).logits
        alone = model(input_ids=torch.tensor([rows[2][0]])).logits
    torch.testing.assert_close(both[1, :len(rows[2][0])], alone[0], rtol=0, atol=1e-5)
    for images, got in ((pixels(1), 1), (pixels(3), 3), (None, 0)):
        with pytest.raises(ValueError, match=rf"need 2 images \(one per pixel placeholder, one dummy per row without "
                                             rf"any\) but {got} were given"):
            model(input_ids=ids, attention_mask=mask, images=images)


def test_understanding_and_generation_placeholders_take_their_own_images_in_one_batch(small):
    model, tokenizer = small
    rows = mixed_rows(tokenizer)
    ids, mask, labels = padded(rows[:2], tokenizer.pad_token_id)
    images = pixels(2, seed=8)  # row 0's image; row 1 draws from given codes, so it takes a dummy image as in LLaVA
    codes = model.vision_toklip().tokenize(pixels(1, seed=9))
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask, labels=labels, images=images, image_codes=codes)
        first = model(input_ids=torch.tensor([rows[0][0]]), images=images[:1]).logits
        second = model(input_ids=torch.tensor([rows[1][0]]), image_codes=codes).image_logits
    torch.testing.assert_close(mixed.logits[0, :first.shape[1]], first[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed.image_logits[1, :second.shape[1]], second[0], rtol=0, atol=1e-5)


def test_bad_placeholders_and_code_counts_are_refused_naming_them(small):
    model, tokenizer = small
    ids = torch.tensor([text_ids(tokenizer, "draw") + [-5, DRAW]])
    with pytest.raises(ValueError, match=r"unknown negative ids \[-5\]: only IMAGE_TOKEN_INDEX \(-200\) and "
                                         r"IMAGE_GEN_TOKEN_INDEX \(-201\) are placeholders"):
        model(input_ids=ids, image_codes=random_codes(model, 1))
    one = torch.tensor([text_ids(tokenizer, "draw") + [DRAW]])
    with pytest.raises(ValueError, match="the batch has 1 generation placeholders but image_codes has 2 rows"):
        model(input_ids=one, image_codes=random_codes(model, 2))
    with pytest.raises(ValueError, match="the batch has 0 generation placeholders but image_codes has 1 rows"):
        model(input_ids=one[:, :-1], image_codes=random_codes(model, 1))


def test_token_id_zero_is_text_like_any_other_token(small):
    model, tokenizer = small
    ids = torch.tensor([[0] + text_ids(tokenizer, "a cat") + [0, 0]])
    with torch.no_grad():
        ours = model(input_ids=ids)
        plain = model(inputs_embeds=model.get_model().embed_tokens(ids)).logits  # the Qwen2 LLaVA's text path
    torch.testing.assert_close(ours.logits, plain, rtol=0, atol=1e-6)
    assert ours.loss is None and ours.text_loss is None and ours.image_loss is None  # no labels, no loss


def test_a_left_padded_batch_gives_each_row_the_logits_it_has_alone(small):
    model, tokenizer = small
    rows = [text_ids(tokenizer, c) for c in CAPTIONS]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(rows):  # the splice drops the padding, then right-pads
            torch.testing.assert_close(batch[i, :len(row)], model(input_ids=torch.tensor([row])).logits[0],
                                       rtol=0, atol=1e-5)


def test_the_training_forward_returns_the_cache_attentions_and_hidden_states_asked_for(small):
    model, tokenizer = small
    rows = mixed_rows(tokenizer)
    ids, mask, labels = padded(rows[1:], tokenizer.pad_token_id)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, image_codes=random_codes(model, 1))
    length = len(rows[1][0]) + model.config.image_tokens + 1  # the longest row, its image expanded
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        plain = model(**inputs, use_cache=False)
        full = model(**inputs, use_cache=True, output_attentions=True, output_hidden_states=True)
    assert plain.past_key_values is None and plain.attentions is None and plain.hidden_states is None
    assert full.past_key_values.get_seq_length() == length
    assert len(full.attentions) == layers and full.attentions[0].shape[-2:] == (length, length)
    assert len(full.hidden_states) == layers + 1
    torch.testing.assert_close(model.lm_head(full.hidden_states[-1]).float(), full.logits)
    torch.testing.assert_close(full.logits, plain.logits, rtol=0, atol=1e-5)


def test_rows_are_right_padded_with_masked_ignored_positions_counting_from_zero(small):
    model, tokenizer = small
    rows = mixed_rows(tokenizer)
    ids, mask, labels = padded(rows[1:], tokenizer.pad_token_id)
    n = model.config.image_tokens
    with torch.no_grad():
        batch = model.prepare_unified_inputs(ids, mask, labels, None, random_codes(model, 1))
    lengths = [len(rows[1][0]) + n + 1, len(rows[2][0])]  # the placeholder became BOI, n codes, EOI
    width = max(lengths)
    assert batch.inputs_embeds.shape[:2] == (2, width)
    assert batch.attention_mask.tolist() == [[i < length for i in range(width)] for length in lengths]
    assert batch.position_ids.tolist() == [list(range(width))] * 2
    short = lengths[1]
    assert batch.text_labels[1, short:].eq(IGNORE).all() and batch.code_labels[1, short:].eq(IGNORE).all()
    assert not batch.inputs_embeds[1, short:].any()
    assert batch.text_labels[1, :short].tolist() == labels[1, :short].tolist()


def test_truncation_at_the_model_max_length_may_cut_text_but_never_learned_codes(small):
    model, tokenizer = small
    ids, _, labels = padded(mixed_rows(tokenizer)[1:2], tokenizer.pad_token_id)
    n, p = model.config.image_tokens, int((ids[0] == DRAW).nonzero())
    codes = random_codes(model, 1)
    full = model.prepare_unified_inputs(ids, None, labels, None, codes)
    try:
        for limit in (p + n + 1, p + n + 2):  # up to the last code: its codes are all kept
            model.config.tokenizer_model_max_length = limit
            cut = model.prepare_unified_inputs(ids, None, labels, None, codes)
            assert cut.inputs_embeds.shape[1] == limit
            torch.testing.assert_close(cut.inputs_embeds, full.inputs_embeds[:, :limit])
            assert cut.code_labels.tolist() == full.code_labels[:, :limit].tolist()
        model.config.tokenizer_model_max_length = p + n
        with pytest.raises(ValueError, match=rf"a sequence of {full.inputs_embeds.shape[1]} positions \(images expanded\)"
                                             rf" is cut at tokenizer_model_max_length {p + n}, which drops learned image "
                                             "codes: raise --model_max_length or shorten the sample"):
            model.prepare_unified_inputs(ids, None, labels, None, codes)
        unlabelled = model.prepare_unified_inputs(ids, None, None, None, codes)  # nothing learned: cut freely
        assert unlabelled.inputs_embeds.shape[1] == p + n
    finally:
        model.config.tokenizer_model_max_length = None


@pytest.mark.parametrize("images", ["list", "5-d"])
def test_tiled_images_are_refused_even_under_the_pad_setting(small, images):
    model, tokenizer = small
    ids = torch.tensor([text_ids(tokenizer, "look") + [UNDERSTAND]])
    given = [pixels(1)[0]] if images == "list" else pixels(2)[None]
    with pytest.raises(ValueError, match="one \\[3, S, S\\] image per placeholder.*got 'square'"):
        model(input_ids=ids, images=given)


# sampling ------------------------------------------------------------------------------------------
def test_generation_prompt_is_the_system_and_user_turns_then_the_opened_assistant_turn():
    import toklip_plugin.integrations.llava.unified  # noqa: F401  (registers the templates, as LLaVA's lookup does)
    from toklip_plugin.integrations.llava.image_generation import generation_prompt

    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert generation_prompt("a cat") == system + "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    # LLaVA's template renders an empty message as its role alone: the unconditional prompt has no end of turn
    assert generation_prompt("", "qwen_2_unified") == system + "<|im_start|>user\n<|im_start|>assistant\n"


def test_the_prompt_batch_is_left_padded_conditional_then_unconditional_rows_ending_in_boi(small):
    from toklip_plugin.integrations.llava.image_generation import (
        generation_prompt,
        prompt_batch,
    )

    model, tokenizer = small
    ids, mask = prompt_batch(model, tokenizer, CAPTIONS, cfg=True)
    boi = model.config.image_start_token_id
    rows = [text_ids(tokenizer, generation_prompt(c)) + [boi] for c in CAPTIONS + ["", ""]]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    assert ids.tolist() == [[pad] * (width - len(r)) + r for r in rows]
    assert mask.tolist() == [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    plain, plain_mask = prompt_batch(model, tokenizer, CAPTIONS, cfg=False, max_batch_size=2)
    assert plain.tolist() == ids[:2, width - plain.shape[1]:].tolist() and plain_mask.shape == (2, plain.shape[1])
    saved = tokenizer.pad_token
    tokenizer.pad_token = None  # a tokenizer without a pad token pads with id 0 (masked anyway)
    try:
        unpadded, _ = prompt_batch(model, tokenizer, CAPTIONS, cfg=True)
    finally:
        tokenizer.pad_token = saved
    assert unpadded[3, 0] == 0 and unpadded[:, -1].eq(boi).all()


def test_the_prompt_batch_refuses_a_string_no_prompts_and_too_many_rows_saying_what_fits(small):
    from toklip_plugin.integrations.llava.image_generation import prompt_batch

    model, tokenizer = small
    for prompts in ("a cat", []):
        with pytest.raises(ValueError, match="^prompts must be a non-empty list of captions$"):
            prompt_batch(model, tokenizer, prompts, cfg=False)
    prompt_batch(model, tokenizer, CAPTIONS, cfg=True, max_batch_size=4)  # exactly full
    with pytest.raises(ValueError, match=r"2 prompts need 4 rows \(a conditional and an unconditional row each, for "
                                         r"classifier-free guidance\) but max_batch_size is 3: pass at most 1 prompts "
                                         r"per call or cfg_scale=None$"):
        prompt_batch(model, tokenizer, CAPTIONS, cfg=True, max_batch_size=3)
    with pytest.raises(ValueError, match=r"2 prompts need 2 rows \(one each\) but max_batch_size is 1: pass at most 1 "
                                         r"prompts per call$"):
        prompt_batch(model, tokenizer, CAPTIONS, cfg=False, max_batch_size=1)


def test_the_context_must_hold_the_prompt_the_codes_and_the_end_of_image_token(small):
    from toklip_plugin.integrations.llava.image_generation import (
        prompt_batch,
        sample_image_codes,
    )

    model, tokenizer = small
    ids, mask = prompt_batch(model, tokenizer, CAPTIONS, cfg=False)
    needed = ids.shape[1] + model.config.image_tokens + 1
    saved = model.config.max_position_embeddings
    try:
        model.config.max_position_embeddings = needed
        sample_image_codes(model, ids, mask, top_k=1)
        model.config.max_position_embeddings = needed - 1
        with pytest.raises(ValueError, match=rf"a prompt of {ids.shape[1]} tokens plus 4 image codes and the "
                                             rf"end-of-image token needs {needed} positions but the model's context is "
                                             rf"{needed - 1} \(max_position_embeddings\): shorten the caption"):
            sample_image_codes(model, ids, mask, top_k=1)
    finally:
        model.config.max_position_embeddings = saved


@pytest.mark.parametrize("cfg_scale", [3.0, None], ids=["cfg", "no-cfg"])
def test_cached_sampling_equals_a_teacher_forced_forward_and_draws_from_the_guided_logits(small, cfg_scale):
    from toklip_plugin.integrations.llava.image_generation import (
        prompt_batch,
        sample_image_codes,
    )

    model, tokenizer = small
    cfg = cfg_scale is not None
    prompts = CAPTIONS + ["a green triangle"]  # three prompts of three lengths: padded rows, [cond x 3; uncond x 3]
    ids, mask = prompt_batch(model, tokenizer, prompts, cfg=cfg)
    sample = sample_image_codes(model, ids, mask, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    rows, n, k = len(ids), model.config.image_tokens, model.config.image_codebook_size
    assert sample.codes.shape == (3, n) and sample.logits.shape == (rows, n, k) and sample.guided.shape == (3, n, k)
    captions = prompts + [""] * 3 if cfg else prompts
    full = teacher_forced_image_logits(model, tokenizer, captions, sample.codes.repeat(rows // 3, 1))
    torch.testing.assert_close(sample.logits, full, rtol=0, atol=1e-5)
    guided = full[3:] + 3.0 * (full[:3] - full[3:]) if cfg else full
    torch.testing.assert_close(sample.guided, guided, rtol=0, atol=1e-4)
    assert torch.equal(sample.codes, sample.guided.argmax(-1))  # top_k=1: the guided argmax
    plain = sample_image_codes(model, ids, mask, cfg_scale=cfg_scale, top_k=1)
    assert torch.equal(plain.codes, sample.codes) and plain.logits is None and plain.guided is None


def test_generate_image_draws_with_its_settings_and_decodes_through_the_tower(small):
    from toklip_plugin.integrations.llava.image_generation import (
        generate_image,
        prompt_batch,
        sample_image_codes,
    )

    model, tokenizer = small
    greedy = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=True), cfg_scale=4.0,
                                return_logits=True, top_k=1)
    for settings in (dict(temperature=0.0), dict(top_k=1), dict(top_p=1e-4)):  # each alone is greedy
        out = generate_image(model, tokenizer, CAPTIONS, **settings)  # cfg_scale 4 by default
        assert torch.equal(out.codes, greedy.codes), settings
    unguided = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=False), top_k=1)
    assert torch.equal(generate_image(model, tokenizer, CAPTIONS, cfg_scale=None, top_k=1).codes, unguided.codes)
    for seed in range(3):  # the defaults: CFG 4, temperature 1, no top-k or top-p filter (the same draws)
        drawn = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=True), cfg_scale=4.0,
                                   temperature=1.0, generator=torch.Generator().manual_seed(seed))
        by_default = generate_image(model, tokenizer, CAPTIONS, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(by_default.codes, drawn.codes)
    draws = []
    for global_seed in (0, 1):  # the generator decides the draw, not the global seed
        torch.manual_seed(global_seed)
        draws.append(generate_image(model, tokenizer, CAPTIONS, cfg_scale=2.0, temperature=5.0,
                                    generator=torch.Generator().manual_seed(3)))
    assert torch.equal(draws[0].codes, draws[1].codes)
    torch.testing.assert_close(draws[0].images, model.vision_toklip().decode_codes(draws[0].codes))
    assert draws[0].images.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="max_batch_size is 3"):
        generate_image(model, tokenizer, CAPTIONS, max_batch_size=3)


def test_generate_image_guides_with_scale_4_unless_told_otherwise(small, monkeypatch):
    """The documented default (configs/llava/README.md, toklip-generate's --cfg-scale): LlamaGen's scale 4.0. A spy
    on the sampler, since on a tiny random model the draws at scale 4 and 5 coincide."""
    from toklip_plugin.integrations.llava import image_generation

    seen, real = [], image_generation.sample_image_codes

    def recording(*args, **kwargs):
        seen.append(kwargs["cfg_scale"])
        return real(*args, **kwargs)

    monkeypatch.setattr(image_generation, "sample_image_codes", recording)
    model, tokenizer = small
    image_generation.generate_image(model, tokenizer, CAPTIONS[:1], top_k=1)
    image_generation.generate_image(model, tokenizer, CAPTIONS[:1], cfg_scale=None, top_k=1)
    assert seen == [4.0, None]


def test_decoding_without_the_vq_decoder_says_how_to_reopen_the_model(small):
    from toklip_plugin.integrations.llava.image_generation import decode_image_codes

    model, _ = small
    vq = model.vision_toklip().vq
    decoder, vq.decoder = vq.decoder, None
    try:
        with pytest.raises(RuntimeError, match=r"loaded without its VQ decoder: build it from a unified config "
                                               r"\(mm_vision_keep_decoder=True\), e.g. re-open the checkpoint"):
            decode_image_codes(model, random_codes(model, 1))
    finally:
        vq.decoder = decoder


# the template: which samples lose their caption --------------------------------------------------------
def template(dropout: float):
    from llava.conversation import conv_templates

    import toklip_plugin.integrations.llava.unified  # noqa: F401  (registers the templates)

    return dataclasses.replace(conv_templates["qwen_2_unified"], caption_dropout=dropout)


def rendered(dropout: float, source, tokenizer):
    out = template(dropout).preprocess([source], tokenizer, has_image=True)
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


@pytest.mark.parametrize("source, dropped", [
    ([{"from": "human", "value": "a cat"}, {"from": "gpt", "value": " <image>\n"}], True),
    ([{"from": "gpt", "value": "hello"}, {"from": "human", "value": "a cat"}, {"from": "gpt", "value": "<image>"}], True),
    ([{"from": "human", "value": "<image>\nlike this"}, {"from": "gpt", "value": "<image>"}], False),
    ([{"from": "human", "value": "a cat"}, {"from": "gpt", "value": "<image> there"}], False),
    ([{"from": "human", "value": "a cat"}, {"from": "gpt", "value": "no image"}], False),
], ids=["spaces-around", "leading-gpt-turn", "image-in-prompt", "image-and-text", "text-answer"])
def test_only_a_caption_then_an_image_alone_loses_its_caption(small, source, dropped):
    from toklip_plugin.integrations.llava.image_generation import generation_prompt

    _, tokenizer = small
    kept, always = rendered(0.0, source, tokenizer), rendered(1.0, source, tokenizer)
    assert (kept != always) == dropped
    if dropped:
        unconditional = text_ids(tokenizer, generation_prompt(""))
        at = kept[0].index(DRAW)
        assert always == (unconditional + kept[0][at:], [IGNORE] * len(unconditional) + kept[1][at:])


def test_without_has_image_the_template_reads_image_text_as_text_like_qwen_2(small):
    from llava.conversation import conv_templates

    _, tokenizer = small
    source = [{"from": "human", "value": "a cat"}, {"from": "gpt", "value": "<image>"}]
    ours = template(0.0).preprocess([source], tokenizer)
    theirs = conv_templates["qwen_2"].preprocess([source], tokenizer)
    assert ours["input_ids"][0].tolist() == theirs["input_ids"][0].tolist() and DRAW not in ours["input_ids"][0]


def test_registering_the_template_adds_it_under_its_name_once(monkeypatch):
    from llava import conversation as conversation_lib

    from toklip_plugin.integrations.llava.unified_template import (
        conv_qwen_2_unified,
        register_unified_template,
    )

    monkeypatch.delitem(conversation_lib.conv_templates, "qwen_2_unified", raising=False)
    before = dict(conversation_lib.conv_templates)
    for _ in range(2):
        register_unified_template()
        assert conversation_lib.conv_templates == {**before, "qwen_2_unified": conv_qwen_2_unified}


# the converted base --------------------------------------------------------------------------------------
def test_write_unified_base_checks_its_settings_and_can_write_again_into_nested_folders(qwen2_dir, tmp_path):
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    with pytest.raises(ValueError, match="unknown gen_fusion 'gated'; choose one of concat, sum, weighted_sum"):
        write_unified_base(qwen2_dir, tmp_path / "x", gen_fusion="gated")
    for bad in (1.0, -0.01):
        with pytest.raises(ValueError, match=rf"gen_prompt_dropout must be in \[0, 1\), got {bad}"):
            write_unified_base(qwen2_dir, tmp_path / "x", gen_prompt_dropout=bad)
    base = tmp_path / "base"
    (base).mkdir()
    for file in qwen2_dir.iterdir():
        (base / file.name).symlink_to(file)
    (base / "sub").mkdir()  # a folder of the base (not a weight or tokenizer file) is not linked
    out = tmp_path / "a" / "b" / "unified"
    for _ in range(2):  # a second run over the same folder keeps its links
        assert write_unified_base(base, out, gen_fusion="sum", gen_prompt_dropout=0.0) == out
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaQwen2UnifiedForCausalLM"] and config["gen_fusion"] == "sum"
    assert config["gen_prompt_dropout"] == 0.0 and not (out / "config.json").is_symlink()
    assert not (out / "sub").exists()
    for file in qwen2_dir.iterdir():
        if file.name != "config.json":
            assert (out / file.name).is_symlink() and (out / file.name).resolve() == file.resolve()


def test_the_unified_base_command_writes_the_folder_and_prints_it(qwen2_dir, tmp_path, capsys, monkeypatch):
    from toklip_plugin.integrations.llava.unified_base import main

    main([str(qwen2_dir), str(tmp_path / "defaults")])
    main([str(qwen2_dir), str(tmp_path / "set"), "--gen-fusion", "weighted_sum", "--gen-weight", "0.5",
          "--gen-prompt-dropout", "0.2"])
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "defaults"), str(tmp_path / "set")]
    monkeypatch.setenv("COLUMNS", "60")  # narrower than the description: it is printed as written, not re-wrapped
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert "A Qwen2 base for training the unified model (:mod:`.unified`) with LLaVA's own train.py." in usage.splitlines()
    assert "LLaVA picks its model class" not in usage  # the docstring's first paragraph only
    for name, expected in (("defaults", ("concat", 1.0, 0.1)), ("set", ("weighted_sum", 0.5, 0.2))):
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert (config["gen_fusion"], config["gen_weight"], config["gen_prompt_dropout"]) == expected


def test_a_hub_id_base_is_read_from_the_hugging_face_cache(qwen2_dir, tmp_path, monkeypatch):
    from helpers.hub_cache import fake_commit, use_offline_cache, write_snapshot

    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    cache = use_offline_cache(monkeypatch, tmp_path / "hf")
    snapshot = write_snapshot(cache, "someone/tiny-qwen2", fake_commit("v1"), qwen2_dir)
    out = write_unified_base("someone/tiny-qwen2", tmp_path / "out")
    weights = out / "model.safetensors"
    assert weights.resolve() == (snapshot / "model.safetensors").resolve()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava_qwen2_unified"


def test_write_unified_base_defaults_are_the_documented_ones_and_match_the_command(qwen2_dir, tmp_path):
    """configs/llava/README.md: ``[--gen-weight 1.0] [--gen-prompt-dropout 0.1] [--gen-fusion concat]``; a Python
    caller (the CPU demo) gets the same settings as the command."""
    from toklip_plugin.integrations.llava.unified_base import write_unified_base

    config = json.loads((write_unified_base(qwen2_dir, tmp_path / "out") / "config.json").read_text())
    assert (config["gen_weight"], config["gen_prompt_dropout"], config["gen_fusion"]) == (1.0, 0.1, "concat")
