"""The official training transform (random resized crop of 90-100% of the area, bicubic, squashed to a square)
against the deterministic evaluation transform."""
from __future__ import annotations

import torch
from PIL import Image

from toklip_plugin.transforms import image_transform, train_transform


def _image(width: int = 220, height: int = 200) -> Image.Image:
    pixels = torch.arange(width * height * 3, dtype=torch.int64).reshape(height, width, 3) % 251
    return Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB")


def test_two_draws_of_the_training_transform_differ_and_the_eval_transform_repeats():
    image = _image()
    torch.manual_seed(0)
    first, second = train_transform(64)(image), train_transform(64)(image)
    assert first.shape == second.shape == (3, 64, 64)
    assert not torch.equal(first, second)
    assert torch.equal(image_transform(64)(image), image_transform(64)(image))


def test_training_crops_keep_90_to_100_percent_of_the_area_and_are_squashed_to_the_square():
    """Red encodes the column and green the row, so the corners of an output give the crop box it came from."""
    size = 256
    ramp = torch.arange(size, dtype=torch.float32)
    pixels = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                          torch.zeros(size, size)], dim=-1)
    image = Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB")
    torch.manual_seed(1)
    areas = []
    for _ in range(30):
        out = (train_transform(64)(image) + 1) / 2 * 255  # back to pixel values, i.e. source coordinates
        assert out.shape == (3, 64, 64)
        width = float(out[0, 32, -1] - out[0, 32, 0])
        height = float(out[1, -1, 32] - out[1, 0, 32])
        areas.append(width * height / size**2)
        assert 3 / 4 - 0.05 < width / height < 4 / 3 + 0.05
    assert min(areas) > 0.9 - 0.04 and max(areas) < 1.0
    assert max(areas) - min(areas) > 0.02  # the crops differ


def test_training_transform_outputs_the_vq_input_range_and_accepts_any_mode():
    for mode in ("L", "P", "RGBA"):
        out = train_transform(32)(_image().convert(mode))
        assert out.shape == (3, 32, 32) and out.min() >= -1 and out.max() <= 1
