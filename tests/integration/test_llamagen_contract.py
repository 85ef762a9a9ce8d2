"""The LlamaGen integration against LlamaGen's documented contract (no LlamaGen checkout needed).

The contract is written down from LlamaGen's sources (``autoregressive/models/gpt.py``,
``generate.py``, ``train_c2i.py``, ``sample_c2i.py``): factory kwargs, the three forward
modes, ``setup_caches``, CFG batches ``[cond; null]``, ``input_pos`` mutated in place.
"""
from __future__ import annotations

import copy
import importlib
import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import toklip_plugin as tp
from toklip_plugin.checkpoints import native_to_released
from toklip_plugin.integrations.llamagen.fused import FUSIONS, GPT_models, TokLIPTransformer
from toklip_plugin.integrations.llamagen.gpt import GPT_SIZES, Transformer, model_args
from toklip_plugin.integrations.llamagen.sampling import generate
from toklip_plugin.integrations.llamagen.vq import TokLIP_VQ
from toklip_plugin.config import VQConfig
from toklip_plugin.models.vq import VQModel

VOCAB, TOKENS, CLASSES = 1024, 64, 10  # toklip-tiny: 1024 codes, 8x8 grid
CAPTION_TOKENS, CAPTION_DIM = 120, 32  # LlamaGen t2i: 120 caption tokens (T5 features, 2048 wide there)
TINY_GPT = dict(n_layer=2, n_head=4, dim=64)
NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)


def sampling_kwargs(**changes):
    """What sample_c2i.py passes to a GPT factory."""
    return dict(vocab_size=VOCAB, block_size=TOKENS, num_classes=CLASSES, cls_token_num=1, model_type="c2i") | changes


def training_kwargs(**extra):
    """What train_c2i.py passes to a GPT factory."""
    return sampling_kwargs(resid_dropout_p=0.1, ffn_dropout_p=0.1, drop_path_rate=0.0, token_dropout_p=0.1, **extra)


@pytest.fixture(scope="module")
def toklip():
    return tp.create_model(tp.resolve_config("toklip-tiny"), seed=0).eval()


def fused_gpt(toklip, fusion="concat", seed=0, **kwargs) -> TokLIPTransformer:
    """A tiny fused GPT whose fusion and output are randomised, so TokLIP features matter."""
    torch.manual_seed(seed)
    model = GPT_models["GPT-B-toklip"](toklip=toklip, fusion=fusion, **{**TINY_GPT, **sampling_kwargs(), **kwargs})
    with torch.no_grad():
        for p in [*model.fusion.parameters(), model.output.weight]:
            p.normal_(std=0.2)
    return model


def random_codes(batch: int, n: int = TOKENS, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def decode_logits(model, codes: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Logits at every image position through prefill + one-token decode steps, as generate() calls them
    (T = cls_token_num condition tokens: 1 for a class label, 120 for caption embeddings)."""
    cond_tokens = model.cls_token_num
    model.setup_caches(max_batch_size=len(cond), max_seq_length=cond_tokens + codes.shape[1], dtype=torch.float32)
    logits, _ = model(None, cond, torch.arange(cond_tokens))
    steps = [logits[:, -1]]
    input_pos = torch.tensor([cond_tokens], dtype=torch.int)
    for j in range(codes.shape[1] - 1):
        logits, _ = model(codes[:, j:j + 1], cond_idx=None, input_pos=input_pos)
        input_pos += 1
        steps.append(logits[:, -1])
    return torch.stack(steps, dim=1)


# the incremental encoder ------------------------------------------------------------------
def test_incremental_toklip_features_equal_full_causal_forward_at_every_step(toklip):
    model = fused_gpt(toklip)
    encoder = model.token_encoder
    encoder.setup_cache(max_batch_size=3, dtype=torch.float32)
    for seed in (1, 2):  # the second run overwrites a cache full of the first run's keys
        codes = random_codes(3, seed=seed)
        for j in range(TOKENS):
            step = encoder.step(codes[:, j:j + 1], torch.tensor([j]))
            prefix = toklip.encode_codes(codes[:, : j + 1])[:, -1:]
            assert (step - prefix).abs().max() < 1e-5, f"position {j}"


def test_changing_a_later_code_leaves_earlier_step_features_unchanged(toklip):
    encoder = fused_gpt(toklip).token_encoder
    encoder.setup_cache(max_batch_size=1, dtype=torch.float32)
    codes = random_codes(1)
    first = [encoder.step(codes[:, j:j + 1], torch.tensor([j])) for j in range(5)]
    altered = codes.clone()
    altered[0, 4] = (altered[0, 4] + 1) % VOCAB
    again = [encoder.step(altered[:, j:j + 1], torch.tensor([j])) for j in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first[:4], again[:4]))
    assert not torch.allclose(first[4], again[4])


# the fused GPT's three forward modes -------------------------------------------------------
@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_decode_logits_equal_training_forward_logits(toklip, fusion):
    model = fused_gpt(toklip, fusion, **NO_DROPOUT, class_dropout_prob=0.0)
    codes, cond = random_codes(2), torch.tensor([3, 7])
    model.train()
    train_logits, loss = model(cond_idx=cond, idx=codes[:, :-1], targets=codes)
    model.eval()
    assert train_logits.shape == (2, TOKENS, VOCAB)
    assert torch.isfinite(loss)
    assert (decode_logits(model, codes, cond) - train_logits).abs().max() < 1e-4


@pytest.mark.parametrize("cfg", [False, True], ids=["captions", "cfg-halves"])
def test_text_to_image_decode_logits_equal_training_forward_with_120_caption_tokens(toklip, cfg):
    """LlamaGen's t2i layout: 120 caption-embedding tokens condition the image, so the first image
    code sits at position 120 and decode steps must read TokLIP position ``input_pos - 120``."""
    model = fused_gpt(toklip, model_type="t2i", cls_token_num=CAPTION_TOKENS, caption_dim=CAPTION_DIM,
                      **NO_DROPOUT).eval()
    captions = torch.randn(2, CAPTION_TOKENS, CAPTION_DIM, generator=torch.Generator().manual_seed(4))
    codes = random_codes(2)
    if cfg:  # generate()'s t2i CFG batch: [captions; uncond_embedding rows], codes [x; x]
        captions = torch.cat([captions, torch.zeros_like(captions) + model.cls_embedding.uncond_embedding])
        codes = torch.cat([codes, codes])
    train_logits, _ = model(codes[:, :-1], captions)  # teacher forcing: [captions | codes], no cache
    assert train_logits.shape == (len(codes), TOKENS, VOCAB)
    step_logits = decode_logits(model, codes, captions)
    assert model.cfg_halves == cfg
    assert (step_logits - train_logits).abs().max() < 1e-5


def test_toklip_features_change_the_logits(toklip):
    model = fused_gpt(copy.deepcopy(toklip)).eval()
    codes, cond = random_codes(1), torch.tensor([3])
    logits, _ = model(codes[:, :-1], cond)
    model.token_encoder.encoder.pos_embed.data.add_(1.0)  # different features, same code embeddings
    shifted, _ = model(codes[:, :-1], cond)
    assert not torch.allclose(logits, shifted)


def test_a_fresh_fused_gpt_computes_what_the_plain_gpt_with_the_same_weights_computes(toklip):
    torch.manual_seed(0)
    plain = Transformer(model_args("GPT-B", **TINY_GPT, **sampling_kwargs())).eval()
    with torch.no_grad():
        plain.output.weight.normal_(std=0.2)
    fused = GPT_models["GPT-B-toklip"](toklip=toklip, **TINY_GPT, **sampling_kwargs()).eval()
    result = fused.load_state_dict(plain.state_dict(), strict=False)  # sample_c2i.py loads like this
    assert result.unexpected_keys == []
    assert {k.split(".")[0] for k in result.missing_keys} == {"token_encoder", "fusion"}
    codes, cond = random_codes(2), torch.tensor([1, 2])
    assert torch.allclose(fused(codes[:, :-1], cond)[0], plain(codes[:, :-1], cond)[0], atol=1e-5)


# what generate(), train_c2i.py and sample_c2i.py rely on -----------------------------------
def test_generate_with_cfg_gives_int32_codes_in_the_codebook(toklip):
    model = fused_gpt(toklip).eval()
    codes = generate(model, torch.tensor([1, 4, 9]), TOKENS, cfg_scale=2.5, top_k=0, top_p=1.0, temperature=1.0)
    assert codes.dtype == torch.int32 and codes.shape == (3, TOKENS)
    assert 0 <= int(codes.min()) and int(codes.max()) < VOCAB
    assert model.cfg_halves  # the encoder ran once per [x; x] pair
    assert model.token_encoder.k_cache.shape[1] == 6 and model.layers[0].attention.kv_cache.k_cache.shape[0] == 6


def test_sampling_through_a_fullgraph_compiled_model_gives_the_eager_codes(toklip):
    """sample_c2i_ddp.py compiles with fullgraph=True by default: no graph break is allowed."""
    model = fused_gpt(toklip).eval()
    torch.manual_seed(0)
    eager = generate(model, torch.tensor([1, 4]), 16, cfg_scale=2.5)
    torch.manual_seed(0)
    compiled = generate(torch.compile(model, backend="eager", fullgraph=True), torch.tensor([1, 4]), 16, cfg_scale=2.5)
    assert torch.equal(eager, compiled)


def test_sampling_in_bf16_as_sample_c2i_casts_the_model(toklip):
    model = fused_gpt(copy.deepcopy(toklip)).to(dtype=torch.bfloat16).eval()
    codes = generate(model, torch.tensor([1, 4]), 16, cfg_scale=2.5)
    assert model.token_encoder.k_cache.dtype == torch.bfloat16
    assert codes.shape == (2, 16) and 0 <= int(codes.min()) and int(codes.max()) < VOCAB


def test_cfg_rows_share_one_encoder_run_without_changing_logits(toklip):
    model = fused_gpt(toklip).eval()
    codes, cond = random_codes(2), torch.tensor([1, 2, CLASSES, CLASSES])  # [cond; null]
    doubled = torch.cat([codes, codes])
    shared = decode_logits(model, doubled, cond)
    assert model.cfg_halves
    model.setup_caches(4, 1 + TOKENS, torch.float32)
    model(None, cond, torch.arange(1))
    model.cfg_halves = False  # force the encoder to run on every row
    separate = [model(doubled[:, j:j + 1], None, torch.tensor([1 + j], dtype=torch.int))[0] for j in range(TOKENS - 1)]
    assert torch.allclose(shared[:, 1:], torch.cat(separate, dim=1), atol=1e-5)


def test_a_checkpoint_with_the_old_toklip_key_names_loads_and_gives_the_same_logits(toklip):
    """Fused-GPT checkpoints written before ``toklip`` was renamed ``token_encoder`` still load strictly."""
    model = fused_gpt(toklip).eval()
    old = {re.sub(r"^token_encoder\.", "toklip.", k): v for k, v in model.state_dict().items()}
    assert "toklip.codebook" in old and any(k.startswith("toklip.encoder.blocks.") for k in old)
    other_toklip = copy.deepcopy(toklip)
    other_toklip.encoder.pos_embed.data.add_(1.0)  # a different encoder, so the loaded one must be used
    other = fused_gpt(other_toklip, seed=5).eval()
    other.load_state_dict(old)  # strict, as train_c2i.py resumes
    codes, cond = random_codes(2), torch.tensor([3, 7])
    assert torch.equal(other(codes[:, :-1], cond)[0], model(codes[:, :-1], cond)[0])
    assert not any(k.startswith("toklip.") for k in other.state_dict())  # saved again under the new names


def test_old_toklip_key_names_load_inside_a_parent_module_too(toklip):
    """A wrapper (``torch.compile``'s ``_orig_mod.``, an EMA holder) prefixes every key; the rename keeps it."""
    model = fused_gpt(toklip)
    old = {re.sub(r"^token_encoder\.", "toklip.", k): v for k, v in model.state_dict().items()}
    holder = torch.nn.ModuleDict({"gpt": fused_gpt(toklip, seed=5)})
    holder.load_state_dict({f"gpt.{k}": v for k, v in old.items()})
    assert all(torch.equal(v, model.state_dict()[k.removeprefix("gpt.")]) for k, v in holder.state_dict().items())


def test_training_step_updates_the_gpt_and_fusion_but_not_toklip(toklip):
    model = GPT_models["GPT-B-toklip"](toklip=toklip, **TINY_GPT, **training_kwargs()).train()
    ema = copy.deepcopy(model)  # train_c2i.py keeps an EMA copy
    trainable = [p for p in model.parameters() if p.requires_grad]  # creat_optimizer's filter
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    codes, labels = random_codes(4), torch.arange(4)
    _, loss = model(cond_idx=labels, idx=codes[:, :-1], targets=codes)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.token_encoder.parameters())
    assert not any(p.requires_grad for p in model.token_encoder.parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, ema.state_dict()[n])}
    assert changed and all(not n.startswith("token_encoder.") for n in changed)
    assert any(n.startswith("fusion.") for n in changed)
    assert model.get_fsdp_wrap_module_list() == list(model.layers)


def test_a_saved_fused_gpt_resumes_strictly_and_holds_its_toklip(toklip):
    model = fused_gpt(toklip)
    state = model.state_dict()
    assert any(k.startswith("token_encoder.encoder.blocks.") for k in state) and "token_encoder.codebook" in state
    other = fused_gpt(toklip, seed=5)
    other.load_state_dict(state)  # train_c2i.py resumes with strict=True
    assert torch.equal(other.fusion.proj.weight, model.fusion.proj.weight)


def test_factories_exist_for_every_llamagen_size_and_are_declared_as_entry_points():
    names = {f"{size}-toklip": size for size in GPT_SIZES}
    assert set(GPT_models) == set(names)
    assert all(GPT_models[name].args == (size,) for name, size in names.items())  # each builds its own size
    pyproject = tomllib.loads((Path(tp.__file__).resolve().parent.parent / "pyproject.toml").read_text())
    table = pyproject["project"]["entry-points"]["llamagen.gpt_models"]
    assert set(table) == set(names)
    for name, target in table.items():
        module, attribute = target.split(":")
        assert getattr(importlib.import_module(module), attribute) is GPT_models[name], target
    declared = {ep.name: ep for ep in entry_points(group="llamagen.gpt_models")}  # the installed metadata
    assert set(declared) == set(names)
    assert all(declared[name].load() is factory for name, factory in GPT_models.items())
    (vq_ep,) = [ep for ep in entry_points(group="llamagen.vq_models") if ep.name == "toklip"]
    assert vq_ep.load() is TokLIP_VQ


def test_factory_without_toklip_weights_reads_a_saved_toklip_named_by_environment(toklip, tmp_path, monkeypatch):
    toklip.save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("TOKLIP_MODEL", str(tmp_path / "tiny"))
    model = GPT_models["GPT-L-toklip"](**TINY_GPT, **sampling_kwargs())  # LlamaGen passes no TokLIP
    assert torch.equal(model.token_encoder.encoder.pos_embed, toklip.encoder.pos_embed)


# bad input -------------------------------------------------------------------------------
def test_code_outside_the_codebook_is_refused(toklip):
    model = fused_gpt(toklip).eval()
    codes = random_codes(1)
    codes[0, 5] = VOCAB
    with pytest.raises(ValueError, match=r"code indices must lie in \[0, 1024\)"):
        model(codes[:, :-1], torch.tensor([1]))


def test_grid_not_matching_block_size_is_refused(toklip):
    with pytest.raises(ValueError, match=r"8x8 grid .* block_size is 256: use --image-size 128"):
        GPT_models["GPT-B-toklip"](toklip=toklip, **TINY_GPT, **sampling_kwargs(block_size=256))


def test_vocab_not_matching_the_codebook_is_refused(toklip):
    with pytest.raises(ValueError, match="vocab_size is 16384"):
        GPT_models["GPT-B-toklip"](toklip=toklip, **TINY_GPT, **sampling_kwargs(vocab_size=16384))


def test_odd_cfg_batch_is_refused(toklip):
    model = fused_gpt(toklip).eval()
    model.setup_caches(3, 1 + TOKENS, torch.float32)
    with pytest.raises(ValueError, match="CFG batch must be .*even size"):
        model(None, torch.tensor([1, 2, CLASSES]), torch.arange(1))


def test_cfg_decode_batch_whose_halves_differ_is_refused(toklip):
    model = fused_gpt(toklip).eval()
    model.setup_caches(4, 1 + TOKENS, torch.float32)
    model(None, torch.tensor([1, 2, CLASSES, CLASSES]), torch.arange(1))
    with pytest.raises(ValueError, match=r"must be \[x; x\]"):
        model(random_codes(4, 1), None, torch.tensor([1], dtype=torch.int))


def test_decode_before_prefill_position_is_refused(toklip):
    model = fused_gpt(toklip).eval()
    model.setup_caches(1, 1 + TOKENS, torch.float32)
    with pytest.raises(ValueError, match="outside the image tokens"):
        model(random_codes(1, 1), None, torch.tensor([0], dtype=torch.int))


def test_toklip_without_weights_is_refused_instead_of_left_random():
    with pytest.raises(ValueError, match="no released weights"):
        GPT_models["GPT-B-toklip"](toklip="toklip-tiny", **TINY_GPT, **sampling_kwargs())


# VQ_models['toklip'] ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vq_pair():
    torch.manual_seed(0)
    reference = VQModel(VQConfig(codebook_size=VOCAB)).eval()  # LlamaGen's VQ-16
    ours = TokLIP_VQ(codebook_size=VOCAB, codebook_embed_dim=8, commit_loss_beta=0.25).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def test_toklip_vq_codes_equal_vq16_codes(vq_pair):
    reference, ours = vq_pair
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        quant, _, (_, _, indices) = ours.encode(images)  # extract_codes_c2i.py unpacks it like this
        assert torch.equal(indices, reference.encode(images)[2][2])
        assert torch.equal(indices.view(2, -1), reference.tokenize(images))
        decoded = ours.decode_code(indices.view(2, -1).int(), [2, 8, 4, 4])  # sample_c2i.py's call
    assert quant.shape == (2, 8, 4, 4) and decoded.shape == (2, 3, 64, 64)


def test_toklip_vq_loads_the_vq_part_of_a_toklip_checkpoint(vq_pair, toklip):
    reference, vq = vq_pair
    ours = {k: v for k, v in toklip.state_dict().items() if not k.startswith("vq.")}
    ours |= {f"vq.{k}": v for k, v in reference.state_dict().items()}  # a TokLIP whose VQ is `reference`
    released = {"state_dict": {f"module.{k}": v for k, v in native_to_released(ours).items()}}
    for checkpoint in (released, ours):  # the released .pt layout, and ours
        with torch.no_grad():
            for p in vq.parameters():
                p.zero_()
        vq.load_state_dict(checkpoint)
        assert torch.equal(vq.quantize.embedding.weight, reference.quantize.embedding.weight)
        assert torch.equal(vq.decoder.conv_out.weight, reference.decoder.conv_out.weight)


def test_toklip_vq_rejects_a_checkpoint_of_another_codebook(vq_pair):
    with pytest.raises(RuntimeError, match="quantize.embedding.weight"):
        TokLIP_VQ(codebook_size=2048).load_state_dict(vq_pair[0].state_dict())


def test_decode_code_refuses_an_index_outside_the_codebook(vq_pair):
    codes = torch.full((1, 16), VOCAB, dtype=torch.int)
    with pytest.raises(IndexError, match=r"\[0, 1024\)"):
        vq_pair[1].decode_code(codes, [1, 8, 4, 4])
