"""The demo VQ's decoder fit (``toklip-demo unified`` decodes generated codes to pixels)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toklip_plugin import image_transform, resolve_config
from toklip_plugin.demo.synthetic import make_samples
from toklip_plugin.demo.vq import (
    build_demo_vq,
    fit_decoder,
    standardise_post_quant_conv,
)


def _demo_vq_and_images():
    config = resolve_config("toklip-tiny")
    transform = image_transform(config.image_size)
    images = torch.stack([transform(s.image) for s in make_samples(12, seed=3, size=config.image_size)])
    return build_demo_vq(config, images, seed=0), images


def _post_quant_outputs_over_the_codebook(vq) -> torch.Tensor:
    with torch.no_grad():
        return vq.post_quant_conv(vq.quantize.codebook()[:, :, None, None])[:, :, 0, 0]


def test_standardised_post_quant_conv_gives_the_decoder_centred_order_one_inputs_across_the_codebook():
    vq, _ = _demo_vq_and_images()
    default_spread = _post_quant_outputs_over_the_codebook(vq).std(0).mean()

    standardise_post_quant_conv(vq, seed=0)
    outputs = _post_quant_outputs_over_the_codebook(vq)

    assert outputs.mean(0).abs().max() < 1e-5  # centred over the codebook's rows
    # 7 live unit-variance channels through weights U(-1/sqrt(8), 1/sqrt(8)): std about sqrt(7 / 24) = 0.54,
    # where the default initialisation sees the raw code vectors (spread 0.03-0.27 per channel)
    assert 0.3 < outputs.std(0).mean() < 1.0
    assert default_spread < 0.5 * outputs.std(0).mean()
    weight = vq.post_quant_conv.weight.clone()
    standardise_post_quant_conv(vq, seed=0)
    assert torch.equal(vq.post_quant_conv.weight, weight)  # a fresh seeded initialisation, not a compounding one


def _reconstruction_error(vq, images: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(vq.decode(vq.encode(images)[0]), images).item()


@pytest.mark.slow  # about 10 s on two idle cores (the VQ's 128-pixel decoder, 40 steps)
def test_fitted_decoder_reconstructs_quantised_latents_far_better_than_the_random_one_and_freezes_the_rest():
    vq, images = _demo_vq_and_images()
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
