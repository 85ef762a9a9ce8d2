"""The VQ tokenizer: LlamaGen key layout, nearest-code search, decode."""
from __future__ import annotations

import copy

import torch

from toklip_plugin.checkpoints import load_vq_checkpoint
from toklip_plugin.config import VQConfig
from toklip_plugin.models.vq import VQModel


def llamagen_vq_keys(ch_mult, num_res_blocks=2):
    """The parameter names of LlamaGen's VQModel, spelled out from its documented structure."""
    keys = {"quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias",
            "quantize.embedding.weight", "quantize.codebook_used"}
    conv = lambda p: {f"{p}.weight", f"{p}.bias"}
    def res(p, changes_width):
        k = conv(f"{p}.norm1") | conv(f"{p}.conv1") | conv(f"{p}.norm2") | conv(f"{p}.conv2")
        return k | (conv(f"{p}.nin_shortcut") if changes_width else set())
    def attn(p):
        return conv(f"{p}.norm") | conv(f"{p}.q") | conv(f"{p}.k") | conv(f"{p}.v") | conv(f"{p}.proj_out")
    n = len(ch_mult)
    for side in ("encoder", "decoder"):
        keys |= conv(f"{side}.conv_in") | conv(f"{side}.norm_out") | conv(f"{side}.conv_out")
        keys |= res(f"{side}.mid.0", False) | attn(f"{side}.mid.1") | res(f"{side}.mid.2", False)
    widths = [1] + list(ch_mult)
    for i in range(n):  # encoder levels, fine to coarse
        for j in range(num_res_blocks):
            keys |= res(f"encoder.conv_blocks.{i}.res.{j}", j == 0 and widths[i] != widths[i + 1])
            if i == n - 1:
                keys |= attn(f"encoder.conv_blocks.{i}.attn.{j}")
        if i != n - 1:
            keys |= conv(f"encoder.conv_blocks.{i}.downsample.conv")
    rev = list(reversed(ch_mult))
    for i in range(n):  # decoder levels, coarse to fine
        for j in range(num_res_blocks + 1):
            keys |= res(f"decoder.conv_blocks.{i}.res.{j}", j == 0 and i > 0 and rev[i - 1] != rev[i])
            if i == 0:
                keys |= attn(f"decoder.conv_blocks.{i}.attn.{j}")
        if i != n - 1:
            keys |= conv(f"decoder.conv_blocks.{i}.upsample.conv")
    return keys


def test_vq16_has_llamagen_keys_and_size():
    model = VQModel(VQConfig())  # the defaults are LlamaGen's VQ-16
    assert set(model.state_dict()) == llamagen_vq_keys((1, 1, 2, 2, 4))
    n_params = sum(p.numel() for p in model.parameters())
    assert 71.5e6 < n_params < 72.5e6  # LlamaGen reports 72M parameters for VQ-16
    assert model.quantize.embedding.weight.shape == (16384, 8)


def test_vq8_keys_and_grid():  # LlamaGen's VQ-8 layout: one downsampling level fewer
    model = VQModel(VQConfig(codebook_size=64, ch_mult=(1, 2, 2, 4)))
    assert set(model.state_dict()) == llamagen_vq_keys((1, 2, 2, 4))
    assert model.config.downsample == 8


def test_llamagen_checkpoint_layouts_load_strictly(tmp_path):
    cfg = VQConfig(codebook_size=32, ch=32, z_channels=32, num_res_blocks=2)
    source, target = VQModel(cfg), VQModel(cfg)
    for key in ("model", "ema", "state_dict"):
        path = tmp_path / f"vq_{key}.pt"
        torch.save({key: source.state_dict(), "steps": 10}, path)
        load_vq_checkpoint(target, path)
        for name, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], value), (key, name)


def test_tokenize_is_brute_force_nearest_normalised_code():
    torch.manual_seed(0)
    cfg = VQConfig(codebook_size=64, ch=32, z_channels=32, num_res_blocks=1)
    vq = VQModel(cfg).eval()
    with torch.no_grad():  # a stored codebook that is not unit-norm: look-ups must normalise it
        vq.quantize.embedding.weight.mul_(torch.rand(64, 1) * 3 + 0.1)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = vq.tokenize(x)
    with torch.no_grad():
        latent = vq.quant_conv(vq.encoder(x))  # [B, 8, 4, 4]
    codebook = vq.quantize.embedding.weight
    expected = torch.empty(2, 16, dtype=torch.long)
    for b in range(2):
        for r in range(4):
            for c in range(4):
                z = latent[b, :, r, c]
                z = z / z.norm()
                dists = [((z - e / e.norm()) ** 2).sum().item() for e in codebook]
                expected[b, r * 4 + c] = min(range(len(dists)), key=dists.__getitem__)
    assert torch.equal(codes, expected)


def test_encode_matches_llamagen_contract_and_decode_round_trip():
    torch.manual_seed(0)
    cfg = VQConfig(codebook_size=64, ch=32, z_channels=32, num_res_blocks=1)
    vq = VQModel(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        quant, _, (_, _, indices) = vq.encode(x)
        assert indices.shape == (2 * 16,) and indices.dtype == torch.long
        assert torch.equal(indices.view(2, 16), vq.tokenize(x))
        looked_up = vq.quantize.get_codebook_entry(indices, quant.shape)
        assert torch.allclose(quant, looked_up, atol=1e-6)
        # quant is the straight-through z + (e - z), within ~3e-8 of e; the decoder amplifies that
        assert torch.allclose(vq.decode(quant), vq.decode_code(indices, quant.shape), atol=1e-4)
        channels_last = vq.quantize.get_codebook_entry(indices, (2, 4, 4, 8), channel_first=False)
        assert torch.equal(channels_last.permute(0, 3, 1, 2), looked_up)
    assert torch.allclose(looked_up.norm(dim=1), torch.ones(2, 4, 4), atol=1e-6)  # unit-norm code vectors


def test_channels_last_layout_gives_the_same_codes_and_images():
    """The channels-last speed-up must not change results: compare with a contiguous-layout copy."""
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=256, ch=32, z_channels=32, num_res_blocks=1)).eval()
    reference = copy.deepcopy(vq)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref_latent = reference.quant_conv(reference.encoder(x))  # plain NCHW all the way
        assert ref_latent.is_contiguous() and vq.latent(x).is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(vq.latent(x), ref_latent, atol=1e-5)
        codes = vq.tokenize(x)
        ref_codes = reference.quantize.nearest_codes(ref_latent).flatten(1)
        # a code may flip only at a near-tie: both candidates equally close to the latent
        z = torch.nn.functional.normalize(ref_latent.permute(0, 2, 3, 1).reshape(4, 16, 8), dim=-1)
        table = reference.quantize.codebook()
        gap = ((z - table[codes]).square().sum(-1) - (z - table[ref_codes]).square().sum(-1)).abs()
        assert (codes != ref_codes).float().mean() < 0.05 and gap.max() < 1e-5
        quant = reference.quantize.get_codebook_entry(codes.flatten(), (4, 8, 4, 4))
        ref_image = reference.decoder(reference.post_quant_conv(quant))
        assert torch.allclose(vq.decode_code(codes.flatten(), (4, 8, 4, 4)), ref_image, atol=1e-4)
