"""The paper's OpenCLIP ViT-B/16 ablation encoder (class token appended last, 'tok' pooling), checked against
open_clip's own modules with the same weights: its VisionTransformer (bidirectional, class token first) and,
for the causal arrangement of the official code (class token last, causal mask), its Transformer blocks."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

import toklip_plugin as tp
from toklip_plugin.checkpoints import CheckpointError, init_from_open_clip
from toklip_plugin.config import EncoderConfig

IMAGE, PATCH, WIDTH, EMBED = 64, 16, 64, 32
GRID = IMAGE // PATCH
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}


def _open_clip_model() -> CLIP:
    """A tiny open_clip CLIP (its own VisionTransformer), every weight random (LayerNorms included)."""
    torch.manual_seed(0)
    model = CLIP(EMBED, CLIPVisionCfg(layers=2, width=WIDTH, head_width=16, patch_size=PATCH, image_size=IMAGE),
                 CLIPTextCfg(**TEXT))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _toklip_config(causal: bool, codebook_size: int = 64):
    tiny = tp.resolve_config("toklip-tiny")
    encoder = EncoderConfig(width=WIDTH, depth=2, heads=4, mlp_ratio=4.0, causal=causal, mapping="codebook",
                            class_token="last", pool="tok", norm_pre=True, proj=True, act="gelu", norm_eps=1e-5)
    return tiny.replace(name="openclip-test", image_size=IMAGE, embed_dim=EMBED, encoder=encoder, text=TEXT,
                        vq=dataclasses.replace(tiny.vq, codebook_size=codebook_size),
                        init_logit_bias=None)


def _student(clip: CLIP, causal: bool) -> tp.TokLIP:
    model = tp.create_model(_toklip_config(causal), seed=1).eval()
    init_from_open_clip(model, clip.state_dict())
    return model


def _patches_as_codes(clip: CLIP, model: tp.TokLIP, images: torch.Tensor) -> torch.Tensor:
    """Make code ``b * GRID**2 + i`` embed to open_clip's patch embedding of image b, patch i, so that both towers
    read the same inputs; returns those codes ``[B, GRID**2]``."""
    with torch.no_grad():
        patches = clip.visual.conv1(images).flatten(2).transpose(1, 2)  # [B, N, width]
        model.encoder.code_embed.weight[: patches.shape[0] * GRID**2] = patches.reshape(-1, WIDTH)
    return torch.arange(patches.shape[0] * GRID**2).reshape(patches.shape[0], GRID**2)


@pytest.fixture
def clip_and_images():
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    return _open_clip_model(), images


def test_init_copies_every_vision_and_text_weight_and_drops_only_the_patch_embedding(clip_and_images):
    clip, _ = clip_and_images
    model = tp.create_model(_toklip_config(causal=True), seed=1)
    report = init_from_open_clip(model, clip.state_dict())
    assert report["dropped"] == ["visual.conv1.weight"]
    ours, theirs = model.state_dict(), clip.state_dict()
    assert torch.equal(ours["encoder.class_embedding"], theirs["visual.class_embedding"])
    assert torch.equal(ours["encoder.proj"], theirs["visual.proj"])
    assert torch.equal(ours["encoder.blocks.1.attn.qkv.weight"], theirs["visual.transformer.resblocks.1.attn.in_proj_weight"])
    assert torch.equal(ours["encoder.blocks.0.mlp.fc2.bias"], theirs["visual.transformer.resblocks.0.mlp.c_proj.bias"])
    assert torch.equal(ours["encoder.norm.weight"], theirs["visual.ln_post.weight"])
    # the class token's position row moves from first to last
    pos = theirs["visual.positional_embedding"]
    assert torch.equal(ours["encoder.pos_embed"][0], torch.cat([pos[1:], pos[:1]]))
    for key, value in theirs.items():
        if not key.startswith("visual."):
            assert torch.equal(ours["text." + key if key != "logit_scale" else key], value), key


def test_bidirectional_forward_equals_open_clips_vision_transformer(clip_and_images):
    clip, images = clip_and_images
    model = _student(clip, causal=False)
    codes = _patches_as_codes(clip, model, images)
    clip.visual.output_tokens = True
    with torch.no_grad():
        pooled_ref, tokens_ref = clip.visual(images)  # class token first, 'tok' pooling, ln_post, proj
        tokens, pooled = model.encode_codes_and_pool(codes)
    torch.testing.assert_close(tokens, tokens_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, pooled_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.encode_codes(codes), tokens_ref, rtol=1e-4, atol=1e-5)


def test_causal_forward_equals_open_clip_blocks_with_the_class_token_last_under_a_causal_mask(clip_and_images):
    clip, images = clip_and_images
    model = _student(clip, causal=True)
    codes = _patches_as_codes(clip, model, images)
    visual = clip.visual
    with torch.no_grad():
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        pos = visual.positional_embedding
        cls = (visual.class_embedding + pos[0]).expand(len(images), 1, -1)
        x = visual.ln_pre(torch.cat([patches + pos[1:], cls], dim=1))
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)
        x = visual.ln_post(visual.transformer(x, attn_mask=mask))
        tokens, pooled = model.encode_codes_and_pool(codes)
    torch.testing.assert_close(tokens, x[:, :-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, x[:, -1] @ visual.proj, rtol=1e-4, atol=1e-5)


def test_changing_code_j_leaves_earlier_tokens_unchanged_and_reaches_the_class_token(clip_and_images):
    clip, _ = clip_and_images
    model = _student(clip, causal=True)
    codes = torch.randint(0, 64, (1, GRID**2), generator=torch.Generator().manual_seed(5))
    changed = codes.clone()
    j = 9
    changed[0, j] = (codes[0, j] + 1) % 64
    with torch.no_grad():
        (a, pooled_a), (b, pooled_b) = model.encode_codes_and_pool(codes), model.encode_codes_and_pool(changed)
        prefix = model.encode_codes(codes[:, :j])
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=0)
    assert not torch.allclose(a[:, j:], b[:, j:])
    assert not torch.allclose(pooled_a, pooled_b)  # the class token, last, sees every code
    torch.testing.assert_close(prefix, a[:, :j], rtol=1e-5, atol=1e-6)


def test_semantic_tokens_leave_the_class_token_out_and_map_pooling_of_them_is_refused(clip_and_images):
    clip, images = clip_and_images
    model = _student(clip, causal=True)
    with torch.no_grad():
        tokens = model.encode_codes(torch.zeros(2, GRID**2, dtype=torch.long))
        assert tokens.shape == (2, GRID**2, WIDTH)
        assert model.encode_image(images.clamp(-1, 1)).shape == (2, EMBED)
    with pytest.raises(ValueError, match="encode_codes_and_pool"):
        model.pool_tokens(tokens)


def test_bidirectional_class_token_model_refuses_an_explicit_mask_it_cannot_extend(clip_and_images):
    model = _student(clip_and_images[0], causal=False)
    with pytest.raises(ValueError, match="class token"):
        model.encode_codes(torch.zeros(1, 4, dtype=torch.long), attn_mask=torch.zeros(4, 4))


def test_grid_mismatch_resamples_the_patch_positions_and_keeps_the_class_row(clip_and_images):
    clip, _ = clip_and_images
    config = _toklip_config(causal=True).replace(image_size=2 * IMAGE)  # 8x8 codes from a 4x4 ViT
    model = tp.create_model(config, seed=1)
    report = init_from_open_clip(model, clip.state_dict())
    assert report["resampled"] == ["visual.positional_embedding"]
    pos = model.encoder.pos_embed[0]
    assert pos.shape == (4 * GRID**2 + 1, WIDTH)
    assert torch.equal(pos[-1], clip.visual.positional_embedding[0])


def test_class_token_options_must_agree_and_siglip_shaped_models_refuse_open_clip_weights(clip_and_images):
    with pytest.raises(ValueError, match="pool 'tok'"):
        EncoderConfig(pool="tok")
    with pytest.raises(ValueError, match="class token"):
        EncoderConfig(class_token="last")
    with pytest.raises(CheckpointError, match="class token"):
        init_from_open_clip(tp.create_model(tp.resolve_config("toklip-tiny")), clip_and_images[0].state_dict())


def test_the_named_ablation_model_has_the_vit_b16_grid_and_no_logit_bias():
    config = tp.resolve_config("toklip-b16-openclip")
    assert (config.grid_size, config.embed_dim, config.encoder.width) == (14, 512, 768)  # ViT-B/16 at 224 px
    assert (config.encoder.class_token, config.encoder.pool) == ("last", "tok")
    assert not config.has_logit_bias
