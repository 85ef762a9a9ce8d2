"""Evaluation of TokLIP: zero-shot classification, retrieval, teacher similarity, reconstruction.

The metric functions in :mod:`.metrics` are the one implementation of zero-shot top-k and
retrieval recall@k in the package (the trainer's demo evaluation uses them too). The runners
(:mod:`.zero_shot`, :mod:`.retrieval`, :mod:`.features`, :mod:`.reconstruction`) read real data by
path and are what ``toklip-eval`` (and the thin scripts in ``eval/``) call.
"""
from .metrics import caption_positives, first_hit_rank, psnr, recall_at_k, retrieval_recall, ssim, zero_shot_accuracy

__all__ = [
    "caption_positives",
    "first_hit_rank",
    "psnr",
    "recall_at_k",
    "retrieval_recall",
    "ssim",
    "zero_shot_accuracy",
]
