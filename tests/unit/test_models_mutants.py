"""Gaps in the model tests found by ``make mutation GROUPS=models`` (tests/MUTATION.md): the normalisation
flags, the no-bias logits, the VQ's code choice on a non-square grid, the code-range bounds, the error
messages, and the Hub tokenizer path."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import toklip_plugin as tp
from toklip_plugin.models.text import TOKENIZER_ENV, build_tokenizer


@pytest.fixture
def codes(tiny_config):
    return torch.randint(0, tiny_config.vq.codebook_size, (3, tiny_config.num_tokens),
                         generator=torch.Generator().manual_seed(4))


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).sum(-1, keepdim=True).sqrt()


def test_pooled_embeddings_are_raw_by_default_and_unit_rows_when_asked(tiny_model, codes, images):
    tokens, pooled = tiny_model.encode_codes_and_pool(codes)
    assert not torch.allclose(pooled.norm(dim=-1), torch.ones(3))  # raw by default
    torch.testing.assert_close(tiny_model.encode_codes_and_pool(codes, normalize=True)[1], _unit_rows(pooled))
    torch.testing.assert_close(tiny_model.pool_tokens(tokens), pooled)
    torch.testing.assert_close(tiny_model.pool_tokens(tokens, normalize=True), _unit_rows(pooled))
    raw_image = tiny_model.encode_image(images)
    assert not torch.allclose(raw_image.norm(dim=-1), torch.ones(len(images)))
    torch.testing.assert_close(tiny_model.encode_image(images, normalize=True), _unit_rows(raw_image))


def test_logits_of_a_model_without_a_bias_are_the_scaled_cosines(tiny_config):
    model = tp.create_model(tiny_config.replace(init_logit_bias=None), seed=0)
    assert model.logit_bias is None
    image, text = torch.randn(2, model.config.embed_dim), torch.randn(3, model.config.embed_dim)
    expected = model.logit_scale.exp() * _unit_rows(image) @ _unit_rows(text).t()
    torch.testing.assert_close(model.logits(image, text), expected)


def test_the_vq_picks_the_nearest_normalised_code_on_a_non_square_grid(tiny_model):
    quantize = tiny_model.vq.quantize
    z = torch.randn(2, tiny_model.config.vq.codebook_embed_dim, 3, 5, generator=torch.Generator().manual_seed(2))
    codes = quantize(z)[2][2].view(2, 3, 5)
    table = F.normalize(quantize.embedding.weight, dim=1)
    vectors = z.permute(0, 2, 3, 1)  # [B, H, W, C]: one vector per grid cell
    brute = torch.stack([torch.stack([torch.stack([(table @ (v / v.norm())).argmax() for v in row])
                                      for row in image]) for image in vectors])
    assert torch.equal(codes, brute)


def test_codebook_lookups_accept_both_ends_of_the_range_and_refuse_one_past_either(tiny_model):
    quantize, size = tiny_model.vq.quantize, tiny_model.config.vq.codebook_size
    ends = quantize.get_codebook_entry(torch.tensor([0, size - 1]))  # both ends are codes
    torch.testing.assert_close(ends, F.normalize(quantize.embedding.weight[[0, size - 1]], dim=1))
    for bad, low, high in (([-1, 5], -1, 5), ([3, size], 3, size)):
        with pytest.raises(IndexError, match=rf"^code indices must lie in \[0, {size}\), got min {low} max {high}$"):
            quantize.get_codebook_entry(torch.tensor(bad))


def test_a_layer_outside_the_encoder_is_refused_with_the_whole_message(tiny_model, codes):
    depth = tiny_model.config.encoder.depth
    message = (f"layer {depth + 1} is outside this encoder's {depth + 1} hidden states (the embeddings and {depth} "
               f"blocks): give an int in [{-depth - 1}, {depth}] (-1: the last block's output), or layer=None for "
               "the final, LayerNorm-ed tokens")
    with pytest.raises(ValueError) as err:
        tiny_model.encode_codes(codes, layer=depth + 1)
    assert str(err.value) == message


def test_pooling_semantic_tokens_of_a_class_token_model_is_refused_naming_the_way(tiny_config, codes):
    encoder = dataclasses.replace(tiny_config.encoder, class_token="last", pool="tok")
    model = tp.create_model(tiny_config.replace(encoder=encoder), seed=0)
    with pytest.raises(ValueError) as err:
        model.pool_tokens(model.encode_codes(codes))
    assert str(err.value) == ("this encoder pools its class token ('tok' pooling), which the semantic tokens do not "
                              "include; use forward_pooled(codes, codebook) (TokLIP.encode_codes_and_pool)")


def test_grad_checkpointing_is_switched_on_by_default_when_asked(tiny_model):
    tiny_model.encoder.set_grad_checkpointing()
    assert tiny_model.encoder.grad_checkpointing is True
    tiny_model.encoder.set_grad_checkpointing(False)
    assert tiny_model.encoder.grad_checkpointing is False


def test_non_float_images_are_refused_saying_what_was_found_and_how_to_convert(tiny_model, images):
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    with pytest.raises(ValueError) as err:
        tiny_model.tokenize(pixels)
    low, high = int(pixels.min()), int(pixels.max())
    assert str(err.value) == (
        f"expected float images in [-1, 1], got torch.uint8 with values from {low} to {high}; convert them (0..255 "
        f"pixels: images.float() / 127.5 - 1), or toklip_plugin.image_transform({tiny_model.image_size}) maps PIL "
        "images to [-1, 1]")


# Hugging Face tokenizers ------------------------------------------------------------------------------
def _word_tokenizer(folder, words: list[str]) -> None:
    """A tiny Hugging Face fast tokenizer (one id per lower-case word) saved as ``from_pretrained`` reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)


def test_a_hub_tokenizer_reads_a_local_folder_with_the_configs_cleaning_and_context_length(tmp_path, monkeypatch):
    _word_tokenizer(tmp_path / "tok", ["hello", "world"])
    config = {"kind": "hf", "name": "nobody/not-on-this-machine", "kwargs": {"clean": "canonicalize"}}
    # canonicalize lower-cases and drops punctuation: the words are found; without it they would be unknown
    expected = torch.tensor([[2, 3, 0, 0, 0, 0]])
    assert torch.equal(build_tokenizer(config, 6, path=str(tmp_path / "tok"))(["Hello, World!"]), expected)
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path / "tok"))  # the folder named by the environment instead
    assert torch.equal(build_tokenizer(config, 6)(["Hello, World!"]), expected)


_PINNED_TOKENIZER = textwrap.dedent("""
    import json, sys
    from toklip_plugin.models.text import build_tokenizer
    config = {"kind": "hf", "name": "nobody/words", "revision": sys.argv[1]}
    print(json.dumps(build_tokenizer(config, 3)(["beta"]).tolist()))
""")


@pytest.mark.slow
def test_a_pinned_tokenizer_revision_is_the_snapshot_read_not_main(tmp_path):
    """A real Hugging Face cache (refs/main -> the later snapshot), read offline in a fresh process."""
    repo = tmp_path / "hub" / "models--nobody--words"
    pinned, later = "1" * 40, "2" * 40
    for commit, words in ((pinned, ["alpha", "beta"]), (later, ["beta", "alpha"])):
        _word_tokenizer(repo / "snapshots" / commit, words)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(later)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(TOKENIZER_ENV, None)

    def ids(revision: str) -> list:
        done = subprocess.run([sys.executable, "-c", _PINNED_TOKENIZER, revision], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert ids(pinned) == [[3, 0, 0]]  # "beta" is the second word of the pinned vocabulary
    assert ids("main") == [[2, 0, 0]]  # and the first of the later one


def _std(tensor: torch.Tensor) -> float:
    return float(tensor.detach().float().std())


def test_a_random_encoder_starts_from_the_documented_initialisation(tiny_config):
    """timm's ViT scales (positions and linear weights 0.02, zero biases, a 0.02 code table) and open_clip's
    width ** -0.5 for the class embedding and the projection; sample standard deviations within 10 %
    (30 % for the class embedding's `width` values)."""
    encoder_config = dataclasses.replace(tiny_config.encoder, mapping="codebook", class_token="last", pool="tok",
                                         proj=True)
    encoder = tp.create_model(tiny_config.replace(encoder=encoder_config), seed=3).encoder
    width = encoder_config.width
    assert _std(encoder.pos_embed) == pytest.approx(0.02, rel=0.1)
    assert _std(encoder.code_embed.weight) == pytest.approx(0.02, rel=0.1)
    assert _std(encoder.proj) == pytest.approx(width ** -0.5, rel=0.1)
    assert _std(encoder.class_embedding) == pytest.approx(width ** -0.5, rel=0.3)  # only `width` values
    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None or not m.bias.any() for m in linears)
    assert _std(torch.cat([m.weight.flatten() for m in linears])) == pytest.approx(0.02, rel=0.1)


# second round (tests/MUTATION.md, models: "second round") --------------------------------------------
def _encoder(tiny_config, **changes) -> tp.models.token_encoder.TokenEncoder:
    config = tiny_config.replace(encoder=dataclasses.replace(tiny_config.encoder, **changes))
    return tp.create_model(config, seed=0).eval()


def test_a_new_encoder_runs_each_block_once_per_step_and_twice_with_grad_checkpointing(tiny_model, codes):
    """Checkpointing recomputes each block in the backward pass: off by default, on when asked."""
    encoder, codebook = tiny_model.encoder, tiny_model.vq.quantize.codebook()
    assert encoder.grad_checkpointing is False
    calls = []
    encoder.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # the recomputation stops early
    for enabled, runs in ((False, 1), (True, 2)):
        encoder.set_grad_checkpointing(enabled)
        calls.clear()
        encoder.forward_pooled(codes, codebook)[1].sum().backward()
        assert len(calls) == runs


def test_grad_checkpointing_gives_the_gradients_of_plain_backprop_through_autograd_grad(tiny_model, codes):
    encoder, codebook = tiny_model.encoder, tiny_model.vq.quantize.codebook()
    params = [p for p in encoder.parameters() if p.requires_grad]

    def grads() -> list[torch.Tensor]:
        return torch.autograd.grad(encoder.forward_pooled(codes, codebook)[1].pow(2).sum(), params)

    plain = grads()
    encoder.set_grad_checkpointing()
    for got, want in zip(grads(), plain):
        torch.testing.assert_close(got, want)


def test_the_code_mlp_is_8_to_4d_to_d_with_exact_gelu_and_the_blocks_use_the_configs_mlp_ratio(tiny_config):
    encoder = _encoder(tiny_config, mlp_ratio=2.0, act="gelu_tanh").encoder
    width, code_dim = tiny_config.encoder.width, tiny_config.vq.codebook_embed_dim
    mlp = encoder.code_mlp
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (code_dim, 4 * width, width)
    assert mlp.act.approximate == "none"  # the paper's exact GELU, whatever the blocks use
    for head in [*(block.mlp for block in encoder.blocks), encoder.attn_pool.mlp]:
        assert head.fc1.out_features == 2 * width
        assert head.act.approximate == "tanh"  # SigLIP's activation in the blocks and the pooling head


def test_a_projection_without_an_embedding_width_is_square(tiny_config):
    from toklip_plugin.models.token_encoder import TokenEncoder

    config = dataclasses.replace(tiny_config.encoder, class_token="last", pool="tok", proj=True)
    encoder = TokenEncoder(config, tiny_config.num_tokens, tiny_config.vq.codebook_embed_dim,
                           tiny_config.vq.codebook_size)
    assert encoder.proj.shape == (config.width, config.width)


def test_codes_embedded_at_given_positions_equal_those_rows_of_the_full_embedding(tiny_model, codes):
    encoder, codebook = tiny_model.encoder, tiny_model.vq.quantize.codebook()
    full = encoder.embed_codes(codes, codebook)
    positions = torch.tensor([5, 2])
    torch.testing.assert_close(encoder.embed_codes(codes[:, positions], codebook, positions), full[:, positions])


def test_a_float32_codebook_drives_a_bfloat16_encoder(tiny_model, codes):
    encoder = tiny_model.encoder.to(torch.bfloat16)
    codebook = tiny_model.vq.quantize.codebook()
    assert codebook.dtype == torch.float32
    mapped = encoder.map_codes(codes, codebook)
    assert mapped.dtype == torch.bfloat16
    torch.testing.assert_close(mapped, encoder.map_codes(codes, codebook.to(torch.bfloat16)))


def test_an_all_zero_attention_mask_makes_a_causal_model_attend_both_ways(tiny_config, codes):
    """An explicit mask replaces the causal default: zeros everywhere give the bidirectional model's tokens."""
    causal = tp.create_model(tiny_config, seed=0).eval()
    both_ways = _encoder(tiny_config, causal=False)
    both_ways.load_state_dict(causal.state_dict())
    mask = torch.zeros(codes.shape[1], codes.shape[1])
    assert not torch.allclose(causal.encode_codes(codes), both_ways.encode_codes(codes))  # the mask must matter
    for layer in (None, -1, 1):
        torch.testing.assert_close(causal.encode_codes(codes, layer=layer, attn_mask=mask),
                                   both_ways.encode_codes(codes, layer=layer))


def test_a_mask_that_lets_each_token_see_only_itself_runs_each_token_alone_also_with_checkpointing(tiny_model):
    encoder = tiny_model.encoder
    x = torch.randn(2, 5, tiny_model.width, generator=torch.Generator().manual_seed(0))
    alone = torch.cat([encoder.forward_blocks(x[:, i:i + 1])[-1] for i in range(5)], dim=1)
    own_only = torch.full((5, 5), float("-inf")).fill_diagonal_(0.0)
    torch.testing.assert_close(encoder.forward_blocks(x, own_only)[-1], alone)
    encoder.set_grad_checkpointing()
    with torch.enable_grad():
        torch.testing.assert_close(encoder.forward_blocks(x.requires_grad_(), own_only)[-1], alone)


def test_a_bidirectional_class_token_model_gives_the_same_tokens_both_ways_and_they_see_the_class_token(
        tiny_config, codes):
    model = _encoder(tiny_config, causal=False, class_token="last", pool="tok")
    tokens = model.encode_codes(codes)
    torch.testing.assert_close(model.encode_codes_and_pool(codes)[0], tokens)
    with torch.no_grad():
        model.encoder.class_embedding.add_(1.0)
    assert not torch.allclose(model.encode_codes(codes), tokens)
    with pytest.raises(ValueError) as err:
        model.encode_codes(codes, attn_mask=torch.zeros(codes.shape[1], codes.shape[1]))
    assert str(err.value) == ("an explicit attn_mask covers the code tokens only, but with bidirectional attention "
                              "they also attend to the class token; leave attn_mask=None")


def test_the_vq_is_frozen_and_the_encoder_trains(tiny_model):
    assert not any(p.requires_grad for p in tiny_model.vq.parameters())
    assert all(p.requires_grad for p in tiny_model.encoder.parameters())


def test_codes_that_are_not_a_2d_tensor_are_refused_saying_what_was_given(tiny_model):
    size = tiny_model.config.vq.codebook_size
    for bad, got in ((torch.zeros(2, 3, 4, dtype=torch.long), "(2, 3, 4)"), ([[1, 2]], "list")):
        with pytest.raises(ValueError) as err:
            tiny_model.encode_codes(bad)
        assert str(err.value) == f"expected integer codes [B, n] in [0, {size}), got {got}"


def test_empty_batches_of_the_wrong_dtype_are_refused_without_a_value_range(tiny_model):
    size, name, s = tiny_model.config.vq.codebook_size, tiny_model.config.name, tiny_model.image_size
    with pytest.raises(ValueError) as err:
        tiny_model.encode_codes(torch.zeros(2, 0))
    assert str(err.value) == (f"expected integer codes (int64 or int32) in [0, {size}), the VQ codebook of {name}; "
                              "got torch.float32. Codes come from model.tokenize(images)")
    with pytest.raises(ValueError) as err:
        tiny_model.tokenize(torch.zeros(0, 3, s, s, dtype=torch.uint8))
    assert str(err.value).startswith("expected float images in [-1, 1], got torch.uint8; convert them")


def test_the_code_range_check_and_its_host_sync_run_only_when_asked(tiny_model, codes, images, monkeypatch):
    """``check_range=False`` skips the range check's one host sync (``_value_range``); ``encode_image``'s codes
    come from the VQ, so only its pixel check syncs."""
    import toklip_plugin.models.toklip as toklip_module

    calls = []
    original = toklip_module._value_range
    monkeypatch.setattr(toklip_module, "_value_range", lambda values: calls.append(values.dtype) or original(values))
    tiny_model.encode_codes_and_pool(codes, check_range=False)
    tiny_model.encode_codes(codes, check_range=False)
    assert calls == []
    tiny_model.encode_codes_and_pool(codes)
    assert calls == [codes.dtype]
    calls.clear()
    tiny_model.encode_image(images)
    assert calls == [images.dtype]


def test_the_forward_pass_and_text_probs_follow_the_objective(tiny_config, images):
    """forward: unit image and text embeddings; text_probs: a softmax over texts without a bias, else a sigmoid
    of ``exp(scale) * cos + bias`` per pair, by hand."""
    texts = tp.get_tokenizer("toklip-tiny")(["a cat", "a dog", "two birds"])
    for bias in (None, -3.0):
        model = tp.create_model(tiny_config.replace(init_logit_bias=bias), seed=0).eval()
        image_emb, text_emb = model(images, texts)
        torch.testing.assert_close(image_emb, _unit_rows(model.encode_image(images)))
        torch.testing.assert_close(text_emb, _unit_rows(model.encode_text(texts)))
        torch.testing.assert_close(model.encode_text(texts, normalize=True), text_emb)
        assert not torch.allclose(model.encode_text(texts).norm(dim=-1), torch.ones(3))  # raw by default
        scaled = model.logit_scale.exp() * image_emb @ text_emb.t()
        expected = scaled.exp() / scaled.exp().sum(-1, keepdim=True) if bias is None else 1 / (1 + (-scaled - bias).exp())
        torch.testing.assert_close(model.text_probs(image_emb, text_emb), expected)


def test_the_encoders_forward_is_its_pooled_embedding(tiny_model, codes):
    codebook = tiny_model.vq.quantize.codebook()
    torch.testing.assert_close(tiny_model.encoder(codes, codebook), tiny_model.encode_codes_and_pool(codes)[1])


# Hugging Face / open_clip tokenizers -------------------------------------------------------------------
def test_a_tokenizer_config_without_a_kind_is_open_clips_bpe():
    from open_clip.tokenizer import tokenize

    texts = ["a photo of a cat", "Two dogs!"]
    assert torch.equal(build_tokenizer({}, 16)(texts), tokenize(texts, context_length=16))


def test_a_hub_tokenizer_without_kwargs_reads_a_local_folder(tmp_path):
    _word_tokenizer(tmp_path / "tok", ["hello", "world"])
    tokens = build_tokenizer({"kind": "hf", "name": "nobody/words"}, 4, path=str(tmp_path / "tok"))(["world hello"])
    assert torch.equal(tokens, torch.tensor([[3, 2, 0, 0]]))


def test_an_unknown_tokenizer_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_tokenizer({"kind": "sentencepiece"}, 16)
    assert str(err.value) == "unknown tokenizer kind 'sentencepiece'; use 'open_clip_bpe' or 'hf'"


# the VQ ------------------------------------------------------------------------------------------------
def _norm(x, gn):
    return F.group_norm(x, 32, gn.weight, gn.bias, eps=1e-6)  # LlamaGen's Normalize: 32 groups, eps 1e-6


def _resnet(x, block):
    h = F.conv2d(F.silu(_norm(x, block.norm1)), block.conv1.weight, block.conv1.bias, padding=1)
    h = F.conv2d(F.silu(_norm(h, block.norm2)), block.conv2.weight, block.conv2.bias, padding=1)
    if block.nin_shortcut is not None:
        x = F.conv2d(x, block.nin_shortcut.weight, block.nin_shortcut.bias)
    return x + h


def _attention(x, block):
    """taming / LlamaGen's AttnBlock written with bmm: softmax(q^T k / sqrt(c)) over the h*w positions."""
    b, c, h, w = x.shape
    q, k, v = (F.conv2d(_norm(x, block.norm), conv.weight, conv.bias).reshape(b, c, h * w)
               for conv in (block.q, block.k, block.v))
    weights = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c ** -0.5, dim=2)  # [b, query, key]
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + F.conv2d(out, block.proj_out.weight, block.proj_out.bias)


def _vq_latent(vq, x):
    """LlamaGen's VQ-16 encoder + quant_conv, by hand from the module's weights."""
    enc = vq.encoder
    h = F.conv2d(x, enc.conv_in.weight, enc.conv_in.bias, padding=1)
    for level in enc.conv_blocks:
        for i, res in enumerate(level.res):
            h = _resnet(h, res)
            h = _attention(h, level.attn[i]) if len(level.attn) else h
        if hasattr(level, "downsample"):  # pad right and bottom by one, 3x3 stride 2
            h = F.conv2d(F.pad(h, (0, 1, 0, 1)), level.downsample.conv.weight, level.downsample.conv.bias, stride=2)
    h = _resnet(_attention(_resnet(h, enc.mid[0]), enc.mid[1]), enc.mid[2])
    h = F.conv2d(F.silu(_norm(h, enc.norm_out)), enc.conv_out.weight, enc.conv_out.bias, padding=1)
    return F.conv2d(h, vq.quant_conv.weight, vq.quant_conv.bias)


def test_the_vq_encoder_computes_llamagens_vq16_encoder_by_hand_in_float64(tiny_model, images):
    vq = tiny_model.vq.double()
    with torch.no_grad():
        for p in vq.parameters():  # away from the init, so that every bias and norm scale matters
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) * 0.05)
        x = images.double()
        latent = vq.latent(x)
        assert latent.shape[-2:] == (tiny_model.grid_size, tiny_model.grid_size)
        torch.testing.assert_close(latent, _vq_latent(vq, x), rtol=1e-9, atol=1e-9)


def _quantizer_with_a_dead_code() -> tp.models.vq.VectorQuantizer:
    from toklip_plugin.models.vq import VectorQuantizer

    quantize = VectorQuantizer(4, 8)
    with torch.no_grad():
        quantize.embedding.weight.copy_(torch.randn(4, 8, generator=torch.Generator().manual_seed(5)))
        quantize.embedding.weight[2] = 0.0  # a dead code: l2 normalisation leaves it at zero
    return quantize


def test_the_vq_picks_the_code_at_the_smallest_euclidean_distance_also_for_a_dead_zero_code():
    quantize = _quantizer_with_a_dead_code()
    z = torch.randn(2, 8, 10, 12, generator=torch.Generator().manual_seed(6))
    vectors = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    brute = torch.cdist(vectors, quantize.codebook()).argmin(dim=1).view(2, 10, 12)
    assert (brute == 2).any() and (brute != 2).any()  # the dead code is the nearest for some cells only
    assert torch.equal(quantize.nearest_codes(z), brute)


def test_the_quantizer_returns_llamagens_eval_tuple_and_passes_gradients_straight_through_the_normalisation():
    quantize = _quantizer_with_a_dead_code()
    z = torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(7), requires_grad=True)
    weights = torch.randn(2, 8, 3, 5, generator=torch.Generator().manual_seed(8))
    z_q, usage, (_, _, indices) = quantize(z)
    assert usage == (None, None, None, 0)  # LlamaGen: no losses, codebook usage 0 when not tracked
    torch.testing.assert_close(z_q, quantize.get_codebook_entry(indices, z.shape))
    (z_q * weights).sum().backward()
    expected, = torch.autograd.grad((F.normalize(z, dim=1) * weights).sum(), z)
    torch.testing.assert_close(z.grad, expected)


def test_decoding_with_channel_first_false_views_the_code_vectors_as_the_given_shape(tiny_model, codes):
    """LlamaGen's ``decode_code(..., channel_first=False)``: the code vectors are viewed as ``shape`` as they are."""
    vq, g, c = tiny_model.vq, tiny_model.grid_size, tiny_model.config.vq.codebook_embed_dim
    flat = codes[:1].reshape(-1)
    with torch.no_grad():
        expected = vq.decode(vq.quantize.codebook()[flat].view(1, g, g, c))
        torch.testing.assert_close(vq.decode_code(flat, (1, g, g, c), channel_first=False), expected)


def test_the_vq_forward_reconstructs_through_its_own_codes(tiny_model, images):
    with torch.no_grad():
        reconstruction, losses = tiny_model.vq(images[:1])
        expected = tiny_model.decode_codes(tiny_model.tokenize(images[:1]))
    assert losses == (None, None, None, 0)
    torch.testing.assert_close(reconstruction, expected, rtol=0, atol=1e-4)  # z_n + (z_q - z_n) rounds


def test_a_new_codebook_holds_unit_rows_drawn_symmetrically_around_zero():
    """LlamaGen's init: uniform(-1/K, 1/K) entries, rows then l2-normalised (``codebook_l2_norm``)."""
    from toklip_plugin.models.vq import VectorQuantizer

    torch.manual_seed(0)
    table = VectorQuantizer(1024, 8).embedding.weight.detach()
    torch.testing.assert_close(table.norm(dim=1), torch.ones(1024))
    assert abs(float((table > 0).float().mean()) - 0.5) < 0.05  # 8192 entries: a skewed range is far outside
    assert abs(float(table.mean())) < 0.01
