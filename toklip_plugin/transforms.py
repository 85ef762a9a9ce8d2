"""Image preprocessing: PIL / tensors -> ``[B, 3, S, S]`` in [-1, 1], the VQ-16 input range.

Mean and std are 0.5 (LlamaGen's VQ and SigLIP2 both expect [-1, 1]). Grayscale, palette
and RGBA images are converted to RGB. For evaluation any size is resized on its short side and
centre-cropped; training uses the official trainer's random resized crop (open_clip_train's
``is_train`` transform with TokLIP's ``--aug-cfg`` defaults).
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T

from .io import check_aspect_ratio

__all__ = ["image_transform", "train_transform", "check_image_batch", "to_uint8_images", "IMAGE_MEAN", "IMAGE_STD",
           "TRAIN_CROP_SCALE"]

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# area fraction of the random crop: open_clip's AugmentationCfg default, which the official scripts keep
TRAIN_CROP_SCALE = (0.9, 1.0)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _refuse_elongated(image: Image.Image) -> Image.Image:
    check_aspect_ratio(*image.size)  # the resize below holds image_size x (ratio * image_size) pixels
    return image


def image_transform(image_size: int) -> T.Compose:
    """The eval transform for a TokLIP of resolution ``image_size`` (PIL image -> tensor).

    An image more elongated than ``toklip_plugin.io.MAX_ASPECT_RATIO`` raises ``io.ImageRejected`` (a ValueError).
    """
    return T.Compose([
        T.Lambda(_refuse_elongated),
        T.Lambda(_to_rgb),
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


def train_transform(image_size: int) -> T.Compose:
    """The training transform (PIL image -> tensor): a random crop of 90-100% of the area with an aspect ratio
    in [3/4, 4/3] (torchvision's default), squashed to ``image_size`` x ``image_size`` with bicubic interpolation.

    The official trainer's ``--image-resize-mode squash`` only changes its evaluation transform; its training
    transform is this one for every resize mode.
    """
    return T.Compose([
        T.Lambda(_to_rgb),  # first, as the official webdataset decoder ("pilrgb") does: a palette image would
        # otherwise be resized with nearest neighbours (PIL's rule for mode "P")
        T.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=T.InterpolationMode.BICUBIC),
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


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Decoded images ``[B, 3, S, S]`` in about [-1, 1] -> ``[B, S, S, 3]`` uint8 (clamped, rounded to nearest):
    the inverse of the preprocessing above, for writing what the VQ decoder draws."""
    unit = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
