"""Metric functions: answers known by construction, ties, duplicate captions, PSNR / SSIM values."""
from __future__ import annotations

import math

import pytest
import torch

from toklip_plugin.evaluation.metrics import (
    caption_positives, first_hit_rank, psnr, recall_at_k, retrieval_recall, ssim, zero_shot_accuracy,
)


def test_zero_shot_accuracy_counts_the_rank_of_the_true_class():
    classes = torch.eye(4)
    # image i is closest to class order[i][0], then order[i][1], ...
    images = torch.tensor([
        [1.0, 0.5, 0.2, 0.0],   # label 0: rank 0
        [0.0, 1.0, 0.0, 0.3],   # label 1: rank 0
        [0.2, 0.9, 0.5, 0.0],   # label 2: rank 1 (class 1 first)
        [0.8, 0.6, 0.0, 0.1],   # label 3: rank 2 (0, 1 first)
    ])
    labels = torch.tensor([0, 1, 2, 3])
    assert zero_shot_accuracy(images, classes, labels, topk=(1, 2, 3)) == {"top1": 0.5, "top2": 0.75, "top3": 1.0}


def test_a_wrong_candidate_tied_with_the_right_one_ranks_ahead_of_it():
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    positives = torch.tensor([[False, True, False]])
    assert first_hit_rank(scores, positives).tolist() == [1]
    assert recall_at_k(scores, positives, (1, 2)) == {1: 0.0, 2: 1.0}


def test_a_collapsed_model_scores_zero_not_full_marks():
    images = torch.ones(3, 4)
    assert zero_shot_accuracy(images, torch.ones(3, 4), torch.tensor([0, 1, 2]), topk=(1,))["top1"] == 0.0


def test_an_image_is_retrieved_when_any_of_its_captions_is_in_the_top_k():
    image_emb = torch.eye(3)
    text_emb = torch.tensor([
        [1.0, 0.0, 0.0],   # image 0
        [0.9, 0.1, 0.0],   # image 0 (second caption)
        [0.0, 1.0, 0.0],   # image 1
        [0.0, 0.0, 1.0],   # image 1, but describes image 2
        [0.0, 0.6, 0.8],   # image 2
    ])
    owner = torch.tensor([0, 0, 1, 1, 2])
    positives = owner[:, None] == torch.arange(3)[None, :]
    r = retrieval_recall(image_emb, text_emb, positives, ks=(1, 2, 3))
    # image 0: its captions are its two nearest; image 1: "[0,1,0]" nearest; image 2: text 3 (image 1's) first, text 4 second
    assert (r["i2t_r1"], r["i2t_r2"], r["i2t_r3"]) == (pytest.approx(2 / 3), 1.0, 1.0)
    # text 3 scores 1 with image 2, 0 with images 0 and 1 (a tie): its image ranks third
    assert (r["t2i_r1"], r["t2i_r2"], r["t2i_r3"]) == (pytest.approx(4 / 5), pytest.approx(4 / 5), 1.0)


def test_a_caption_shared_by_two_images_is_correct_for_both():
    texts, positives = caption_positives([["a dog", "a dog on grass"], ["a cat", "a dog"]])
    assert texts == ["a dog", "a dog on grass", "a cat", "a dog"]
    assert positives.tolist() == [[True, True], [True, False], [False, True], [True, True]]
    # identical strings embed identically: image 1 must not lose R@1 to image 0's copy of "a dog"
    text_emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]])
    image_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert retrieval_recall(image_emb, text_emb, positives, ks=(1,))["i2t_r1"] == 1.0


def test_a_query_without_any_correct_candidate_is_refused():
    with pytest.raises(ValueError, match="no correct candidate"):
        first_hit_rank(torch.rand(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


def test_psnr_of_a_known_error():
    a = torch.full((2, 3, 8, 8), 0.5)
    assert psnr(a + 0.1, a) == pytest.approx(torch.tensor([20.0, 20.0]), abs=1e-4)
    assert math.isinf(psnr(a, a)[0].item())


def test_ssim_of_flat_images_is_the_luminance_term():
    x, y = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # no variance: the structure term is 1
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim(noise, noise) == pytest.approx(torch.ones(2), abs=1e-5)
    assert (ssim(noise, noise.flip(-1)) < 0.5).all()
