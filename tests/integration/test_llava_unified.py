"""The unified LLaVA-Qwen2 (issue 14, model and sampling): understands through TokLIP features and
writes VQ codes with TokLIP feedback. Real LLaVA and transformers, a tiny Qwen2 and toklip-tiny."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

IGNORE = -100
CAPTIONS = ["a red square on a white background", "a blue circle"]


def tower_args(**changes) -> SimpleNamespace:
    """What LLaVA's train.py passes to initialize_vision_modules (its ModelArguments)."""
    return SimpleNamespace(**{"vision_tower": "toklip-tiny", "mm_vision_select_layer": -1,
                              "mm_vision_select_feature": "patch", "pretrain_mm_mlp_adapter": None,
                              "mm_patch_merge_type": "flat", "mm_projector_type": "mlp2x_gelu", **changes})


def build_unified(qwen2_dir, seed: int = 0, gen_weight: float = 1.0):
    """A tiny unified model set up as training does; its generation modules (the fusion's feature part
    included) and the BOI/EOI embeddings (added as near-identical mean rows) are randomised, so that
    TokLIP's features, the codes and the span tokens change the logits."""
    from transformers import AutoTokenizer

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(qwen2_dir, use_fast=False)
    model = LlavaQwen2UnifiedForCausalLM.from_pretrained(qwen2_dir, torch_dtype=torch.float32)
    model.get_model().initialize_vision_modules(tower_args())
    model.initialize_generation_modules(tokenizer)
    model.config.gen_weight = gen_weight
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in (model.image_head, model.code_embed, model.gen_fusion):
            for p in module.parameters():
                p.normal_(std=0.3)
        span = [model.config.image_start_token_id, model.config.image_end_token_id]
        model.get_model().embed_tokens.weight[span] = torch.randn(2, model.config.hidden_size) * 0.3
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def unified(qwen2_dir):
    return build_unified(qwen2_dir)


def pixels(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# sampling ---------------------------------------------------------------------------------------
def teacher_forced_image_logits(model, tokenizer, captions, codes) -> torch.Tensor:
    """Image-head logits at BOI, c_0, ..., c_{N-2} from ONE full forward over prompt + BOI + codes."""
    from toklip_plugin.integrations.llava.image_generation import generation_prompt
    from toklip_plugin.integrations.llava.unified import IMAGE_GEN_TOKEN_INDEX

    rows = [text_ids(tokenizer, generation_prompt(c)) for c in captions]
    length = max(len(r) for r in rows) + 1
    ids = torch.tensor([r + [IMAGE_GEN_TOKEN_INDEX] + [0] * (length - len(r) - 1) for r in rows])
    mask = torch.tensor([[1] * (len(r) + 1) + [0] * (length - len(r) - 1) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, image_codes=codes).image_logits
    n = codes.shape[1]
    return torch.stack([logits[i, len(r):len(r) + n] for i, r in enumerate(rows)])  # positions BOI .. c_{N-2}


@pytest.mark.slow
def test_cached_sampling_equals_a_full_teacher_forced_forward_at_every_image_position(unified):
    from toklip_plugin.integrations.llava.image_generation import prompt_batch, sample_image_codes

    model, tokenizer = unified
    hidden = model.config.hidden_size
    assert model.gen_fusion.proj.weight[:, hidden:].abs().sum() > 0  # TokLIP's features reach the LLM
    ids, mask = prompt_batch(model, tokenizer, CAPTIONS, cfg=True)
    sample = sample_image_codes(model, ids, mask, cfg_scale=3.0, generator=torch.Generator().manual_seed(0),
                                return_logits=True)
    n = model.config.image_tokens
    assert sample.codes.shape == (2, n) and sample.logits.shape == (4, n, model.config.image_codebook_size)
    full = teacher_forced_image_logits(model, tokenizer, CAPTIONS + ["", ""], sample.codes.repeat(2, 1))
    torch.testing.assert_close(sample.logits, full, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_prompt_gives_the_same_logits_and_codes_alone_as_inside_a_padded_cfg_batch(unified):
    from toklip_plugin.integrations.llava.image_generation import prompt_batch, sample_image_codes

    model, tokenizer = unified
    greedy = dict(cfg_scale=3.0, top_k=1, return_logits=True)
    both = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=True), **greedy)
    alone = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS[1:], cfg=True), **greedy)
    assert len(text_ids(tokenizer, CAPTIONS[0])) > len(text_ids(tokenizer, CAPTIONS[1]))  # the second row is padded
    assert torch.equal(both.codes[1:], alone.codes)
    torch.testing.assert_close(both.logits[[1, 3]], alone.logits, rtol=0, atol=1e-5)  # its conditional and null rows


@pytest.mark.slow
def test_cfg_scale_one_gives_the_conditional_logits_of_an_unguided_run(unified):
    from toklip_plugin.integrations.llava.image_generation import prompt_batch, sample_image_codes

    model, tokenizer = unified
    guided = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=True), cfg_scale=1.0, top_k=1,
                                return_logits=True)
    plain = sample_image_codes(model, *prompt_batch(model, tokenizer, CAPTIONS, cfg=False), cfg_scale=None, top_k=1,
                               return_logits=True)
    assert (guided.logits[:2] - guided.logits[2:]).abs().max() > 1e-3  # the null rows differ: the mix is real
    assert torch.equal(guided.codes, plain.codes)
    torch.testing.assert_close(guided.guided, plain.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.guided, plain.logits, rtol=0, atol=0)


@pytest.mark.slow
def test_generate_image_writes_n_codebook_codes_per_prompt_and_decodes_them_with_the_tower(unified):
    from toklip_plugin.integrations.llava.image_generation import generate_image

    model, tokenizer = unified
    toklip = model.vision_toklip()
    out = generate_image(model, tokenizer, CAPTIONS, cfg_scale=2.0, top_k=50, generator=torch.Generator().manual_seed(1))
    assert out.codes.shape == (2, toklip.num_tokens) and out.codes.dtype == torch.long
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < toklip.config.vq.codebook_size
    assert out.images.shape == (2, 3, toklip.image_size, toklip.image_size)
    torch.testing.assert_close(out.images, toklip.decode_codes(out.codes))
    again = generate_image(model, tokenizer, CAPTIONS, cfg_scale=2.0, top_k=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.codes, out.codes)  # the generator decides the draw


def test_a_generation_span_is_boi_then_n_image_head_targets_then_a_forced_eoi(unified):
    from toklip_plugin.integrations.llava.unified import IMAGE_GEN_TOKEN_INDEX

    model, tokenizer = unified
    n, boi, eoi = model.config.image_tokens, model.config.image_start_token_id, model.config.image_end_token_id
    before, after = text_ids(tokenizer, "draw it"), text_ids(tokenizer, "<|im_end|>\n")
    ids = torch.tensor([before + [IMAGE_GEN_TOKEN_INDEX] + after])
    labels = torch.tensor([[IGNORE] * len(before) + [IMAGE_GEN_TOKEN_INDEX] + after])
    codes = torch.randint(0, model.config.image_codebook_size, (1, n), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = model.prepare_unified_inputs(ids, None, labels, None, image_codes=codes)
    p = len(before)
    assert batch.inputs_embeds.shape[1] == len(before) + n + 2 + len(after)
    embed = model.get_model().embed_tokens
    with torch.no_grad():
        torch.testing.assert_close(batch.inputs_embeds[0, p], embed.weight[boi])
        torch.testing.assert_close(batch.inputs_embeds[0, p + n + 1], embed.weight[eoi])  # EOI closes the span
    text, image = batch.text_labels[0].tolist(), batch.code_labels[0].tolist()
    assert text == [IGNORE] * p + [boi] + [IGNORE] * (n + 1) + after  # the text head: BOI, then after EOI only
    assert image == [IGNORE] * (p + 1) + codes[0].tolist() + [IGNORE] * (1 + len(after))  # the image head: the codes


def test_text_generation_never_emits_the_image_span_tokens(unified):
    model, tokenizer = unified
    boi, eoi = model.config.image_start_token_id, model.config.image_end_token_id
    with torch.no_grad():
        saved = model.lm_head.weight[[boi, eoi]].clone()
        model.lm_head.weight[[boi, eoi]] = model.lm_head.weight[[boi, eoi]] * 0 + 50 * model.lm_head.weight.std()
    try:
        ids = torch.tensor([text_ids(tokenizer, "Describe the picture briefly.")])
        plain_logits = model(input_ids=ids).logits[0, -1]
        assert int(plain_logits.argmax()) in (boi, eoi)  # unsuppressed, the text head would open a span
        out = model.generate(ids, do_sample=False, max_new_tokens=5, min_new_tokens=5,
                             pad_token_id=tokenizer.pad_token_id)
    finally:
        with torch.no_grad():
            model.lm_head.weight[[boi, eoi]] = saved
    assert not {boi, eoi} & set(out[0].tolist())


# training forward -----------------------------------------------------------------------------
def mixed_batch(model, tokenizer):
    """Row 0 understands an image and answers; row 1 draws an image from a caption (both in ChatML)."""
    from llava.constants import IMAGE_TOKEN_INDEX

    from toklip_plugin.integrations.llava.unified import IMAGE_GEN_TOKEN_INDEX

    user, answer = text_ids(tokenizer, "<|im_start|>user\n"), text_ids(tokenizer, "What is it?<|im_end|>\n<|im_start|>assistant\n")
    reply = text_ids(tokenizer, "A red square.<|im_end|>\n")
    caption = text_ids(tokenizer, "<|im_start|>user\na blue circle<|im_end|>\n<|im_start|>assistant\n")
    close = text_ids(tokenizer, "<|im_end|>\n")
    rows = [(user + [IMAGE_TOKEN_INDEX] + answer + reply, [IGNORE] * (len(user) + 1 + len(answer)) + reply),
            (caption + [IMAGE_GEN_TOKEN_INDEX] + close, [IGNORE] * len(caption) + [IMAGE_GEN_TOKEN_INDEX] + close)]
    length = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [IGNORE] * (length - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r, _ in rows])
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=pixels(2, seed=5)), rows


@pytest.mark.slow
def test_training_loss_is_text_ce_plus_weighted_code_ce_of_the_returned_logits(qwen2_dir):
    model, tokenizer = build_unified(qwen2_dir, seed=1, gen_weight=0.5)
    inputs, rows = mixed_batch(model, tokenizer)
    out = model(**inputs)
    n_u = n = model.config.image_tokens  # toklip-tiny: the tower's 64 tokens, also 64 codes per image
    # row 0: the image becomes n_u positions; the reply's tokens are predicted from the position before them
    ids0, lab0 = rows[0]
    shift0 = n_u - 1
    reply_at = [i + shift0 for i, t in enumerate(lab0) if t != IGNORE]
    # row 1: BOI at p, codes at p+1 .. p+n, EOI at p+n+1, then "<|im_end|>\n"
    ids1, lab1 = rows[1]
    p = lab1.index(-201)
    close = [t for t in lab1[p + 1:]]
    targets = [(0, q, ids0[q - shift0]) for q in reply_at]
    targets += [(1, p, model.config.image_start_token_id)]
    targets += [(1, p + n + 2 + k, t) for k, t in enumerate(close)]
    logits = torch.stack([out.logits[b, q - 1] for b, q, _ in targets])
    expected_text = F.cross_entropy(logits, torch.tensor([t for _, _, t in targets]))
    codes = model.vision_toklip().tokenize(inputs["images"][1:])[0]
    expected_image = F.cross_entropy(out.image_logits[1, p:p + n], codes)
    torch.testing.assert_close(out.text_loss, expected_text)
    torch.testing.assert_close(out.image_loss, expected_image)
    torch.testing.assert_close(out.loss, expected_text + 0.5 * expected_image)
    assert torch.isfinite(out.loss) and out.text_loss > 0 and out.image_loss > 0


def test_understanding_matches_the_qwen2_llava_splice(unified):
    from llava.constants import IMAGE_TOKEN_INDEX

    model, tokenizer = unified
    ids = torch.tensor([text_ids(tokenizer, "<|im_start|>user\n") + [IMAGE_TOKEN_INDEX] + text_ids(tokenizer, "What is it?")])
    images = pixels(1, seed=3)
    with torch.no_grad():
        ours = model(input_ids=ids, images=images).logits
        _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images)
        llava = model(inputs_embeds=embeds).logits  # LLaVA's own splice, then the Qwen2 body
    torch.testing.assert_close(ours, llava, rtol=0, atol=1e-5)


def grads_after_backward(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {name: getattr(model, name).weight.grad for name in ("image_head", "code_embed")}


def test_understanding_batch_leaves_the_image_head_and_code_embedding_without_gradient(qwen2_dir):
    model, tokenizer = build_unified(qwen2_dir, seed=2)
    model.train()
    inputs, _ = mixed_batch(model, tokenizer)
    understanding = {k: v[:1] for k, v in inputs.items()}
    for name, grad in grads_after_backward(model, understanding).items():
        assert grad is None or not grad.any(), name
    generation = {k: v[1:] for k, v in inputs.items()}
    for name, grad in grads_after_backward(model, generation).items():
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.slow
def test_frozen_vq_and_token_encoder_stay_bit_identical_after_an_optimizer_step(qwen2_dir):
    model, tokenizer = build_unified(qwen2_dir, seed=3)
    model.train()
    toklip = model.vision_toklip()
    frozen = {k: v.clone() for k, v in toklip.state_dict().items()}
    head = model.image_head.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, _ = mixed_batch(model, tokenizer)
    model(**inputs).loss.backward()
    assert all(p.grad is None for p in toklip.parameters())  # no gradient reaches the tokenizer
    optimizer.step()
    assert all(torch.equal(v, toklip.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(head, model.image_head.weight)  # the step did train the generation side


def test_the_llm_state_dict_holds_no_second_copy_of_the_tower(unified):
    model, _ = unified
    with torch.no_grad():  # the feedback encoder has been used
        model.embed_image_codes(torch.zeros(1, model.config.image_tokens, dtype=torch.long))
    qkv = [k for k in model.state_dict() if k.endswith("blocks.0.attn.qkv.weight")]
    assert qkv == ["model.vision_tower.toklip.encoder.blocks.0.attn.qkv.weight"]
    assert {"image_head.weight", "code_embed.weight", "gen_fusion.proj.weight"} <= set(model.state_dict())


def test_a_saved_unified_checkpoint_is_found_by_model_type_and_reloads_its_generation_weights(unified, tmp_path):
    from llava.model import LlavaLlamaForCausalLM
    from llava.plugins import find_language_model

    from toklip_plugin.integrations.llava.unified import LlavaQwen2UnifiedForCausalLM

    model, _ = unified
    model.save_pretrained(tmp_path)
    assert find_language_model(str(tmp_path), LlavaLlamaForCausalLM) is LlavaQwen2UnifiedForCausalLM
    reloaded = LlavaQwen2UnifiedForCausalLM.from_pretrained(tmp_path)
    for name in ("image_head.weight", "code_embed.weight", "gen_fusion.proj.weight"):
        assert torch.equal(reloaded.state_dict()[name], model.state_dict()[name]), name
    assert reloaded.get_vision_tower().keep_decoder  # the re-built tower will keep its VQ decoder


# bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, "K"])
def test_an_out_of_vocabulary_image_code_is_refused(unified, bad):
    from toklip_plugin.integrations.llava.unified import IMAGE_GEN_TOKEN_INDEX

    model, tokenizer = unified
    k = model.config.image_codebook_size
    codes = torch.zeros(1, model.config.image_tokens, dtype=torch.long)
    codes[0, 5] = k if bad == "K" else bad
    ids = torch.tensor([text_ids(tokenizer, "draw") + [IMAGE_GEN_TOKEN_INDEX]])
    with pytest.raises(ValueError, match=rf"image_codes must lie in \[0, {k}\)"):
        model(input_ids=ids, image_codes=codes)


def test_a_prompt_longer_than_the_context_is_refused(unified):
    from toklip_plugin.integrations.llava.image_generation import generate_image

    model, tokenizer = unified
    long_caption = " ".join(["a red square on a white background"] * 80)
    with pytest.raises(ValueError, match="max_position_embeddings.*shorten the caption"):
        generate_image(model, tokenizer, [long_caption], cfg_scale=None)


def test_cfg_with_more_prompts_than_half_the_batch_is_refused(unified):
    from toklip_plugin.integrations.llava.image_generation import generate_image

    model, tokenizer = unified
    with pytest.raises(ValueError, match="need 6 rows .* max_batch_size is 4: pass at most 2 prompts"):
        generate_image(model, tokenizer, CAPTIONS + ["x"], cfg_scale=3.0, max_batch_size=4)


def test_anyres_images_are_refused(unified, monkeypatch):
    from llava.constants import IMAGE_TOKEN_INDEX

    model, tokenizer = unified
    monkeypatch.setattr(model.config, "image_aspect_ratio", "anyres", raising=False)
    ids = torch.tensor([text_ids(tokenizer, "look") + [IMAGE_TOKEN_INDEX]])
    with pytest.raises(ValueError, match="image_aspect_ratio to 'pad' or 'square'"):
        model(input_ids=ids, images=pixels(1, seed=0))
