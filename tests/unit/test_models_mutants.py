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
