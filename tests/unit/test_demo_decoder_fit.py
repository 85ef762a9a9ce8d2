"""The demo VQ's decoder fit (``toklip-demo unified`` decodes generated codes to pixels)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toklip_plugin import image_transform, resolve_config
from toklip_plugin.demo.synthetic import make_samples
from toklip_plugin.demo.vq import build_demo_vq, fit_decoder


def _reconstruction_error(vq, images: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(vq.decode(vq.encode(images)[0]), images).item()


@pytest.mark.slow  # about 10 s on two idle cores (the VQ's 128-pixel decoder, 40 steps)
def test_fitted_decoder_reconstructs_quantised_latents_far_better_than_the_random_one_and_freezes_the_rest():
    config = resolve_config("toklip-tiny")
    transform = image_transform(config.image_size)
    images = torch.stack([transform(s.image) for s in make_samples(12, seed=3, size=config.image_size)])
    vq = build_demo_vq(config, images, seed=0)
    codes, codebook = vq.tokenize(images), vq.quantize.embedding.weight.clone()
    encoder = {k: v.clone() for k, v in vq.encoder.state_dict().items()}
    random_error = _reconstruction_error(vq, images)

    losses = fit_decoder(vq, images, steps=40, batch_size=2, seed=0)

    assert len(losses) == 40
    assert _reconstruction_error(vq, images) < 0.6 * random_error
    assert torch.equal(vq.tokenize(images), codes)  # the encoder, quant_conv and codebook are untouched
    assert torch.equal(vq.quantize.embedding.weight, codebook)
    assert all(torch.equal(v, encoder[k]) for k, v in vq.encoder.state_dict().items())
    assert not any(p.requires_grad for p in vq.parameters())  # frozen again afterwards
