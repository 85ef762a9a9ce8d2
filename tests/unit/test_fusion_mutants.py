"""The generation pieces shared by the fused LlamaGen GPT and the unified LLaVA (issue 14), against independent
expectations: each fusion's formula written out by hand, the cached TokLIP encoder against its own full causal
forward on an encoder of other sizes (a width unlike the token count, a timm output gate, query/key norms), and
``sample_logits``'s draws against the distribution each filter should leave (issue 15's mutation look)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

from toklip_plugin.config import EncoderConfig
from toklip_plugin.models.cached_encoder import CachedTokenEncoder
from toklip_plugin.models.fusion import (
    FUSIONS,
    ConcatFusion,
    SumFusion,
    WeightedSumFusion,
)
from toklip_plugin.models.sampling import sample_logits
from toklip_plugin.models.token_encoder import TokenEncoder

DIM, WIDTH = 6, 5  # the generating model's width, TokLIP's feature width


def inputs(dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, DIM, generator=g, dtype=dtype), torch.randn(2, 3, WIDTH, generator=g, dtype=dtype)


def randomised(fusion: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_(generator=torch.Generator().manual_seed(7))
    return fusion


# fusions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_a_fresh_or_reset_fusion_returns_the_code_embedding_whatever_the_feature(name):
    code, feature = inputs()
    fusion = FUSIONS[name](DIM, WIDTH).double()
    torch.testing.assert_close(fusion(code, feature), code, rtol=0, atol=1e-12)
    randomised(fusion).reset_parameters()
    torch.testing.assert_close(fusion(code, feature), code, rtol=0, atol=1e-12)


def test_concat_fusion_is_one_bias_free_matrix_over_the_code_then_the_feature():
    code, feature = inputs()
    fusion = randomised(ConcatFusion(DIM, WIDTH).double())
    assert fusion.proj.bias is None and fusion.proj.weight.shape == (DIM, DIM + WIDTH)
    w = fusion.proj.weight
    expected = code @ w[:, :DIM].T + feature @ w[:, DIM:].T
    torch.testing.assert_close(fusion(code, feature), expected)


def test_sum_fusion_adds_the_bias_free_projected_feature():
    code, feature = inputs()
    fusion = randomised(SumFusion(DIM, WIDTH).double())
    assert fusion.proj.bias is None
    torch.testing.assert_close(fusion(code, feature), code + feature @ fusion.proj.weight.T)


def test_weighted_sum_fusion_weighs_code_and_projected_feature_by_its_two_scalars():
    code, feature = inputs()
    fusion = WeightedSumFusion(DIM, WIDTH).double()
    assert fusion.proj.bias is None
    with torch.no_grad():
        fusion.weights.copy_(torch.tensor([0.75, -1.5]))
    expected = 0.75 * code - 1.5 * (feature @ fusion.proj.weight.T)
    torch.testing.assert_close(fusion(code, feature), expected)


def test_weighted_sum_projection_starts_small_as_llamagens_other_linear_layers():
    proj = WeightedSumFusion(256, 256).proj.weight.detach()  # LlamaGen initialises its linear layers with std 0.02
    assert 0.018 < float(proj.std()) < 0.022 and abs(float(proj.mean())) < 0.001


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_a_float32_feature_is_read_in_the_dtype_of_a_bfloat16_model(name):
    code, feature = inputs(torch.float32)
    fusion = randomised(FUSIONS[name](DIM, WIDTH))
    expected = fusion(code.bfloat16().float(), feature.bfloat16().float())
    out = fusion.to(torch.bfloat16)(code.bfloat16(), feature)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_under_bfloat16_autocast_a_float32_fusion_returns_the_code_embeddings_dtype(name):
    code, feature = inputs(torch.float32)
    fusion = randomised(FUSIONS[name](DIM, WIDTH))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(code.bfloat16(), feature)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), fusion(code, feature), rtol=0.05, atol=0.05)


# the cached encoder ---------------------------------------------------------------------------------
TOKENS, CODES = 16, 32  # a 4x4 grid, a 32-code codebook


def small_encoder(gated: bool = False, depth: int = 2, seed: int = 0) -> CachedTokenEncoder:
    """A causal TokLIP encoder 48 wide (not the 16 tokens), 3 heads; ``gated``: timm attention with an output
    gate and query/key LayerNorms in every block. Every weight is random, so each part of a step matters."""
    torch.manual_seed(seed)
    config = EncoderConfig(width=48, depth=depth, heads=3, mlp_ratio=2.0)
    encoder = TokenEncoder(config, num_tokens=TOKENS, code_dim=8, codebook_size=CODES)
    if gated:
        for block in encoder.blocks:
            block.attn = Attention(48, 3, qkv_bias=True, qk_norm=True, gated=True, norm_layer=torch.nn.LayerNorm)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    codebook = F.normalize(torch.randn(CODES, 8), dim=-1)
    return CachedTokenEncoder(encoder.eval(), codebook).double()


def codes_of(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CODES, (batch, TOKENS), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gated, depth", [(False, 2), (True, 2), (False, 1)], ids=["plain", "gated-qk-norm", "one-block"])
def test_steps_equal_the_full_causal_forward_after_a_larger_batch_filled_the_cache(gated, depth):
    cached = small_encoder(gated, depth)
    cached.setup_cache(max_batch_size=3, dtype=torch.float64)
    with torch.no_grad():
        for j, code in enumerate(codes_of(3, seed=1).T):  # a first run of 3 rows fills every cache entry
            cached.step(code[:, None], torch.tensor([j]))
        codes = codes_of(2, seed=2)
        stepped = torch.cat([cached.step(codes[:, j:j + 1], torch.tensor([j])) for j in range(TOKENS)], dim=1)
        full = cached(codes)
    assert full.shape == (2, TOKENS, cached.width)
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-10)


def test_width_is_the_feature_width_and_num_tokens_the_grid():
    cached = small_encoder()
    assert (cached.width, cached.num_tokens) == (48, TOKENS)


def test_the_cache_follows_to_but_is_never_saved():
    cached = small_encoder()
    cached.setup_cache(max_batch_size=2, dtype=torch.float64)
    assert cached.k_cache.dtype == cached.v_cache.dtype == torch.float64
    cached.float()
    assert cached.k_cache.dtype == cached.v_cache.dtype == torch.float32
    assert {k for k in cached.state_dict() if not k.startswith("encoder.")} == {"codebook"}


def test_the_codebook_is_a_copy_detached_from_the_vq():
    codebook = F.normalize(torch.randn(CODES, 8), dim=-1).requires_grad_()
    cached = CachedTokenEncoder(small_encoder().encoder, codebook)
    with torch.no_grad():
        codebook.mul_(2)
    assert not cached.codebook.requires_grad
    torch.testing.assert_close(cached.codebook * 2, codebook.detach())


def test_a_bidirectional_encoder_is_refused_naming_the_setting():
    encoder = TokenEncoder(EncoderConfig(width=48, depth=1, heads=3, causal=False), TOKENS, 8, CODES)
    with pytest.raises(ValueError, match=r"^incremental decoding needs a causal TokLIP encoder \(encoder.causal = true\)$"):
        CachedTokenEncoder(encoder, torch.zeros(CODES, 8))


def test_a_step_before_setup_cache_says_what_to_call():
    cached = small_encoder()
    with pytest.raises(RuntimeError, match=r"^call setup_cache\(max_batch_size, dtype\) before step\(\)$"):
        cached.step(codes_of(1, seed=0)[:, :1], torch.tensor([0]))


# sample_logits ----------------------------------------------------------------------------------------
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
DRAWS = 20000  # one row per draw; a frequency's standard deviation is at most 0.0036


def frequencies(logits: torch.Tensor = LOGITS, seed: int = 0, **options) -> torch.Tensor:
    drawn = sample_logits(logits.expand(DRAWS, -1), generator=torch.Generator().manual_seed(seed), **options)
    assert drawn.shape == (DRAWS, 1) and drawn.dtype == torch.long
    return torch.bincount(drawn[:, 0], minlength=len(logits)).double() / DRAWS


def renormalised(probs: torch.Tensor, keep: list[int]) -> torch.Tensor:
    kept = torch.zeros_like(probs)
    kept[keep] = probs[keep]
    return kept / kept.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_softmax_of_the_logits_over_the_temperature(temperature):
    expected = torch.softmax(LOGITS.double() / temperature, dim=0)
    torch.testing.assert_close(frequencies(temperature=temperature), expected, rtol=0, atol=0.02)


def test_temperature_zero_is_greedy():
    assert frequencies(LOGITS.flip(0), temperature=0.0)[-1] == 1.0


@pytest.mark.parametrize("top_k", [1, 3, 6, 100])
def test_top_k_keeps_exactly_the_k_most_likely_tokens_in_their_proportions(top_k):
    expected = renormalised(torch.softmax(LOGITS.double(), 0), list(range(min(top_k, 6))))
    torch.testing.assert_close(frequencies(top_k=top_k), expected, rtol=0, atol=0.02)


@pytest.mark.parametrize("top_p, keep", [(0.3, 1), (0.5, 2), (0.75, 3), (0.9, 4), (0.97, 5)])
def test_top_p_keeps_the_most_likely_tokens_up_to_and_including_the_first_that_crosses_p(top_p, keep):
    probs = torch.softmax(LOGITS.double(), 0)  # cumulative: 0.42, 0.67, 0.83, 0.92, 0.98, 1
    assert int((probs.cumsum(0) < top_p).sum()) + 1 == keep  # the case is the one named
    perm = torch.tensor([3, 0, 5, 1, 4, 2])  # token i sits at perm[i]: not in the order of its probability
    shuffled, expected = torch.empty_like(LOGITS), torch.empty_like(probs)
    shuffled[perm], expected[perm] = LOGITS, renormalised(probs, list(range(keep)))
    torch.testing.assert_close(frequencies(shuffled, top_p=top_p), expected, rtol=0, atol=0.02)


def test_a_cumulative_probability_equal_to_top_p_has_not_crossed_it_as_in_llamagen():
    # four equal tokens: cumulative 0.25, 0.5 (exactly p), 0.75 (the first over p, kept), 1
    got = frequencies(torch.zeros(4), top_p=0.5).sort(descending=True).values
    torch.testing.assert_close(got, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0], dtype=torch.float64), rtol=0, atol=0.02)


def test_top_p_below_the_most_likely_tokens_probability_keeps_that_token():
    assert frequencies(top_p=0.01)[0] == 1.0


def test_top_k_then_top_p_filters_the_renormalised_top_k():
    probs = torch.softmax(LOGITS.double(), 0)
    # top-3 leaves 0.51, 0.31, 0.19 (renormalised); top-p 0.7 then keeps the first two
    torch.testing.assert_close(frequencies(top_k=3, top_p=0.7), renormalised(probs, [0, 1]), rtol=0, atol=0.02)


def test_each_row_is_drawn_from_its_own_logits_with_the_given_generator():
    logits = torch.full((4, 5), -30.0)
    logits[torch.arange(4), torch.tensor([3, 0, 4, 1])] = 30.0
    assert sample_logits(logits).flatten().tolist() == [3, 0, 4, 1]
    torch.manual_seed(0)
    first = sample_logits(LOGITS.expand(64, -1), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global generator plays no part
    assert torch.equal(first, sample_logits(LOGITS.expand(64, -1), generator=torch.Generator().manual_seed(5)))
