"""What ``toklip-demo unified`` measures on one unified checkpoint, and the picture it draws.

The two accuracies are defined by :data:`DEFINITIONS` (also written to ``results.json``).
:func:`generated_accuracy` is the whole generation rule, so anyone holding the saved codes, the tower and
the teacher recomputes that number. Colour and shape are also scored alone (the answer's words hold the
right colour / shape word and no other), to show which half the model has learned.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..evaluation.metrics import zero_shot_accuracy
from ..models.teacher import SigLIPTeacher
from ..transforms import to_uint8_images
from .synthetic import COLORS, SHAPES, class_names
from .teacher import teacher_image_embeddings

__all__ = ["DEFINITIONS", "QUESTION", "answer_for", "answer_scores", "generated_accuracy", "image_grid",
           "teacher_accuracy"]

QUESTION = "What is in the image?"
LABEL_HEIGHT = 24  # pixels of caption under each image of the grid
DEFINITIONS = {
    "generation_accuracy": "images drawn from the held-out captions (classifier-free guidance) are decoded by the "
                           "tower's VQ decoder, clamped to [-1, 1] and classified zero-shot by the demo's teacher "
                           "(nearest class prompt 'a photo of a {colour} {shape}' by cosine similarity); a hit is "
                           "the caption's class",
    "understanding_accuracy": f"the checkpoint answers '{QUESTION}' about each held-out image with greedy "
                              "decoding; a hit is an answer that, stripped of surrounding white space, equals the "
                              "image's class name (e.g. 'red square') exactly",
}


def answer_for(label: int) -> str:
    """The training answer to :data:`QUESTION`: the class name, e.g. ``red square``."""
    return class_names()[label]


@torch.no_grad()
def teacher_accuracy(teacher: SigLIPTeacher, class_text: torch.Tensor, images: torch.Tensor,
                     labels: torch.Tensor, batch_size: int = 128) -> float:
    """Zero-shot top-1 of the teacher on ``images`` ``[n, 3, S, S]`` (clamped to [-1, 1]) against ``class_text``."""
    image_emb = teacher_image_embeddings(teacher, images.float().clamp(-1, 1), batch_size)
    return zero_shot_accuracy(image_emb, teacher.encode_text(class_text), labels, topk=(1,))["top1"]


@torch.no_grad()
def generated_accuracy(toklip, teacher: SigLIPTeacher, class_text: torch.Tensor, codes: torch.Tensor,
                       labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Decode ``codes`` ``[n, N]`` with ``toklip``'s VQ and score them with :func:`teacher_accuracy`;
    returns the accuracy and the decoded images."""
    images = torch.cat([toklip.decode_codes(chunk) for chunk in codes.split(64)]).float()
    return teacher_accuracy(teacher, class_text, images, labels), images


def answer_scores(answers: Sequence[str], labels: Sequence[int]) -> dict[str, float]:
    """``class`` (exact class name), ``colour`` and ``shape`` (the word among the answer's words) accuracies."""
    names = class_names()
    hits = {"class": 0, "colour": 0, "shape": 0}
    for answer, label in zip(answers, labels, strict=True):
        colour, shape = names[label].split(" ")
        words = answer.strip().split()
        hits["class"] += answer.strip() == names[label]
        hits["colour"] += colour in words and not any(c in words for c in COLORS if c != colour)
        hits["shape"] += shape in words and not any(s in words for s in SHAPES if s != shape)
    return {key: count / len(labels) for key, count in hits.items()}


def image_grid(images: torch.Tensor, captions: Sequence[str], cols: int) -> Image.Image:
    """Images ``[rows * cols, 3, S, S]`` in about [-1, 1] as one picture, each with its caption under it
    (``rows * (S + LABEL_HEIGHT)`` by ``cols * S`` pixels)."""
    rows, size = len(images) // cols, images.shape[-1]
    if rows * cols != len(images) or len(captions) != len(images):
        raise ValueError(f"{len(images)} images / {len(captions)} captions do not fill {cols} columns")
    pixels = to_uint8_images(images).numpy()
    grid = Image.new("RGB", (cols * size, rows * (size + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (tile, caption) in enumerate(zip(pixels, captions)):
        x, y = (i % cols) * size, (i // cols) * (size + LABEL_HEIGHT)
        grid.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y))
        draw.text((x + 2, y + size + 1), _two_lines(caption, size // 6), fill="black")
    return grid


def _two_lines(caption: str, width: int) -> str:
    """``caption`` wrapped at word boundaries into at most two lines of ``width`` characters."""
    lines = [""]
    for word in caption.split():
        if lines[-1] and len(lines[-1]) + 1 + len(word) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    return "\n".join(lines[:2])
