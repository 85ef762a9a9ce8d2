"""Image preprocessing: PIL / tensors -> ``[B, 3, S, S]`` in [-1, 1], the VQ-16 input range.

Mean and std are 0.5 (LlamaGen's VQ and SigLIP2 both expect [-1, 1]). Grayscale, palette
and RGBA images are converted to RGB; any size is resized on its short side and
centre-cropped.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

__all__ = ["image_transform", "check_image_batch", "IMAGE_MEAN", "IMAGE_STD"]

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def image_transform(image_size: int) -> T.Compose:
    """The eval transform for a TokLIP of resolution ``image_size`` (PIL image -> tensor)."""
    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


def check_image_batch(images: torch.Tensor, image_size: int) -> None:
    """Raise a ValueError that says what is expected when ``images`` is not ``[B, 3, S, S]``."""
    expected = f"[B, 3, {image_size}, {image_size}]"
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected an image batch {expected} in [-1, 1], got {got}; "
                         f"use toklip_plugin.image_transform({image_size}) on PIL images")
    if images.shape[1] != 3 or images.shape[2] != image_size or images.shape[3] != image_size:
        raise ValueError(f"expected images of shape {expected}, got {tuple(images.shape)}; "
                         f"resize / convert to RGB with toklip_plugin.image_transform({image_size})")
