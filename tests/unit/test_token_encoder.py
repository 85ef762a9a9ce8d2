"""The token encoder: causality, agreement with timm's VisionTransformer, options."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import toklip_plugin as tp


def _random_codes(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vq.codebook_size, (batch, model.num_tokens), generator=g)


@pytest.mark.parametrize("mapping", ["mlp", "codebook"])
def test_changing_code_j_leaves_earlier_tokens_unchanged(tiny_config, mapping):
    config = tiny_config.replace(encoder=replace(tiny_config.encoder, mapping=mapping))
    model = tp.create_model(config, seed=0).eval()
    codes = _random_codes(model)
    j = 37
    changed = codes.clone()
    changed[:, j] = (changed[:, j] + 1) % config.vq.codebook_size
    with torch.no_grad():
        a, b = model.encode_codes(codes), model.encode_codes(changed)
    assert torch.equal(a[:, :j], b[:, :j])  # bit-identical before j
    assert (a[:, j:] - b[:, j:]).abs().amax(dim=-1).min() > 0  # every later token moves


def test_bidirectional_encoder_changes_all_tokens(tiny_config):
    config = tiny_config.replace(encoder=replace(tiny_config.encoder, causal=False))
    model = tp.create_model(config, seed=0).eval()
    codes = _random_codes(model)
    changed = codes.clone()
    changed[:, 40] = (changed[:, 40] + 1) % config.vq.codebook_size
    with torch.no_grad():
        diff = (model.encode_codes(codes) - model.encode_codes(changed)).abs().amax(dim=-1)
    assert (diff > 0).all()


def _timm_reference(model):
    """A plain timm VisionTransformer (SigLIP-style: no class token, map pooling) with our weights."""
    e = model.config.encoder
    vit = VisionTransformer(
        img_size=model.grid_size * 16, patch_size=16, embed_dim=e.width, depth=e.depth, num_heads=e.heads,
        mlp_ratio=e.mlp_ratio, qkv_bias=True, class_token=False, global_pool="map", num_classes=0,
        act_layer="gelu_tanh", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()
    ours = {k[len("encoder."):]: v for k, v in model.state_dict().items()
            if k.startswith("encoder.") and not k.startswith("encoder.code_mlp.")}
    missing, unexpected = vit.load_state_dict(ours, strict=False)
    assert sorted(missing) == ["patch_embed.proj.bias", "patch_embed.proj.weight"] and not unexpected
    return vit


def test_bidirectional_blocks_equal_timm_vision_transformer(tiny_config):
    config = tiny_config.replace(encoder=replace(tiny_config.encoder, causal=False))
    model = tp.create_model(config, seed=0).eval()
    vit = _timm_reference(model)
    codes = _random_codes(model)
    with torch.no_grad():
        mlp_out = model.encoder.code_mlp(model.vq.quantize.codebook()[codes])
        ref_tokens = vit.norm(vit.blocks(mlp_out + vit.pos_embed))
        ref_pooled = vit.forward_head(ref_tokens)
        tokens = model.encode_codes(codes)
        pooled = model.pool_tokens(tokens)
    assert torch.allclose(tokens, ref_tokens, atol=1e-5)
    assert torch.allclose(pooled, ref_pooled, atol=1e-5)


def test_causal_path_equals_explicit_additive_mask(tiny_model):
    codes = _random_codes(tiny_model)
    n = tiny_model.num_tokens
    mask = torch.full((n, n), float("-inf")).triu(1)  # the way the original code builds it
    with torch.no_grad():
        fused = tiny_model.encode_codes(codes)
        explicit = tiny_model.encode_codes(codes, attn_mask=mask)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_hidden_state_layers_follow_hugging_face_indexing(tiny_model):
    codes = _random_codes(tiny_model)
    enc = tiny_model.encoder
    with torch.no_grad():
        x = enc.embed_codes(codes, tiny_model.vq.quantize.codebook())
        after_first = enc.blocks[0](x, is_causal=True)
        assert torch.allclose(tiny_model.encode_codes(codes, layer=0), x)
        assert torch.allclose(tiny_model.encode_codes(codes, layer=1), after_first, atol=1e-6)
        last = enc.blocks[1](after_first, is_causal=True)
        assert torch.allclose(tiny_model.encode_codes(codes, layer=-1), last, atol=1e-6)
        assert torch.allclose(tiny_model.encode_codes(codes), enc.norm(last), atol=1e-6)


@pytest.mark.parametrize("layer", [3, 5, -4, 1.0, True])
def test_a_layer_outside_the_encoder_is_refused_naming_the_valid_range(tiny_model, layer):
    assert len(tiny_model.encoder.blocks) == 2  # hidden states: embeddings, block 1, block 2
    with pytest.raises(ValueError, match=r"layer .* outside this encoder's 3 hidden states .* in \[-3, 2\]"):
        tiny_model.encode_codes(_random_codes(tiny_model), layer=layer)


def test_negative_layers_count_from_the_last_hidden_state(tiny_model):
    codes = _random_codes(tiny_model)
    with torch.no_grad():
        assert torch.equal(tiny_model.encode_codes(codes, layer=-3), tiny_model.encode_codes(codes, layer=0))
        assert torch.equal(tiny_model.encode_codes(codes, layer=-1), tiny_model.encode_codes(codes, layer=2))


def test_gradient_checkpointing_keeps_outputs_and_gradients(tiny_config):
    codes = _random_codes(tp.create_model(tiny_config, seed=0))
    results = []
    for checkpointing in (False, True):
        model = tp.create_model(tiny_config, seed=0).train()
        model.encoder.set_grad_checkpointing(checkpointing)
        out = model.pool_tokens(model.encode_codes(codes))
        out.square().sum().backward()
        results.append((out.detach(), model.encoder.blocks[0].attn.qkv.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_prefix_encoding_equals_full_encoding_prefix(tiny_model):
    codes = _random_codes(tiny_model)
    with torch.no_grad():
        full = tiny_model.encode_codes(codes)
        prefix = tiny_model.encode_codes(codes[:, :10])
    assert torch.allclose(full[:, :10], prefix, atol=1e-6)


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GELU by its definition, x * Phi(x), with the normal CDF written through erf."""
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def test_code_bridge_is_fc2_of_exact_gelu_of_fc1_of_the_normalised_code_vectors(tiny_config):
    model = tp.create_model(tiny_config, seed=0).double().eval()
    fc1, fc2 = model.encoder.code_mlp.fc1, model.encoder.code_mlp.fc2
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # pre-activations of order one, where exact and tanh GELU differ by ~1e-4
        fc1.weight.copy_(torch.randn(fc1.weight.shape, generator=g, dtype=torch.float64))
        fc1.bias.copy_(torch.randn(fc1.bias.shape, generator=g, dtype=torch.float64))
        fc2.weight.copy_(torch.randn(fc2.weight.shape, generator=g, dtype=torch.float64) / fc2.in_features**0.5)
    codes = _random_codes(model)
    stored = model.vq.quantize.embedding.weight.detach()
    code_vectors = (stored / stored.norm(dim=-1, keepdim=True))[codes]
    pre = code_vectors @ fc1.weight.T + fc1.bias
    assert 0.5 < pre.std() < 5  # the regime where the two GELUs are told apart
    expected = gelu_exact(pre) @ fc2.weight.T + fc2.bias + model.encoder.pos_embed[:, : codes.shape[1]]
    with torch.no_grad():
        embedded = model.encode_codes(codes, layer=0)  # hidden state 0: the block input
    torch.testing.assert_close(embedded, expected, rtol=0, atol=1e-10)
