"""Metric functions against brute-force references: what mutation testing found the first tests left open.

Embeddings here have rows *and* columns of very different lengths, so any normalisation over the
wrong axis (or none) changes a ranking; SSIM is checked against scikit-image's Gaussian SSIM.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from toklip_plugin.evaluation.metrics import caption_positives, first_hit_rank, retrieval_recall, ssim, zero_shot_accuracy


def uneven_embeddings(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Random directions with row lengths over two decades and column scales over one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    row_scale = 10 ** torch.linspace(-1, 1, rows)[torch.randperm(rows, generator=g)]
    col_scale = 10 ** torch.linspace(-0.5, 0.5, dim)
    return x * row_scale[:, None] * col_scale[None, :]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def brute_force_recall(queries: torch.Tensor, candidates: torch.Tensor, correct, k: int) -> float:
    """Share of queries whose best correct candidate has fewer than k wrong candidates scoring at least as high."""
    hits = 0
    for q, query in enumerate(queries.tolist()):
        scores = [cosine(query, c) for c in candidates.tolist()]
        best = max(s for c, s in enumerate(scores) if correct(q, c))
        ahead = sum(1 for c, s in enumerate(scores) if not correct(q, c) and s >= best)
        hits += ahead < k
    return hits / len(queries)


def test_zero_shot_accuracy_is_cosine_ranking_whatever_the_embedding_lengths():
    images, classes = uneven_embeddings(40, 6, seed=0), uneven_embeddings(7, 6, seed=1)
    labels = torch.arange(40) % 6  # the last class is nobody's label: its column still competes
    got = zero_shot_accuracy(images, classes, labels, topk=(1, 2, 3))
    for k in (1, 2, 3):
        expected = brute_force_recall(images, classes, lambda i, c: c == int(labels[i]), k)
        assert got[f"top{k}"] == pytest.approx(expected), k


def test_retrieval_recall_is_cosine_ranking_in_both_directions_whatever_the_lengths():
    images, texts = uneven_embeddings(12, 5, seed=2), uneven_embeddings(30, 5, seed=3)
    owner = torch.arange(30) % 12
    positives = owner[:, None] == torch.arange(12)[None, :]
    got = retrieval_recall(images, texts, positives, ks=(1, 3))
    for k in (1, 3):
        assert got[f"t2i_r{k}"] == pytest.approx(brute_force_recall(texts, images, lambda t, i: owner[t] == i, k))
        assert got[f"i2t_r{k}"] == pytest.approx(brute_force_recall(images, texts, lambda i, t: owner[t] == i, k))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"scores \(2, 3\) and positives \(2, 4\) differ in shape"):
        first_hit_rank(torch.rand(2, 3), torch.ones(2, 4, dtype=torch.bool))


def test_queries_without_a_correct_candidate_are_named_up_to_ten():
    positives = torch.zeros(14, 3, dtype=torch.bool)
    positives[[0, 2], 1] = True  # queries 1 and 3..13 have none
    with pytest.raises(ValueError, match=r"queries \[1, 3, 4, 5, 6, 7, 8, 9, 10, 11\] have no correct candidate"):
        first_hit_rank(torch.rand(14, 3), positives)


def test_caption_positives_is_a_boolean_mask():
    _, positives = caption_positives([["a dog"], ["a cat", "a dog"]])
    assert positives.dtype == torch.bool and positives.tolist() == [[True, True], [False, True], [True, True]]


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_equals_scikit_image_gaussian_ssim(channels):
    g = torch.Generator().manual_seed(channels)
    x = torch.rand(2, channels, 24, 20, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    expected = [structural_similarity(a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, win_size=11,
                                      use_sample_covariance=False, data_range=1.0, channel_axis=0)
                for a, b in zip(x, y)]
    np.testing.assert_allclose(ssim(x, y).double().numpy(), expected, rtol=1e-6)
