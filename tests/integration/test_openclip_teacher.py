"""The paper's ablation setup (Tables 5, 6, B2): open_clip's own ViT as the teacher, a class-token student
initialised from it by name, trained with distillation; and that student's encoder run incrementally.

The teacher is a tiny open_clip CLIP reached through open_clip's public ``local-dir:`` loading, compared with
the same open_clip model's own forward pass (``output_tokens``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file

import toklip_plugin as tp
from toklip_plugin.checkpoints import CheckpointError
from toklip_plugin.demo.synthetic import make_samples, write_csv
from toklip_plugin.models.cached_encoder import CachedTokenEncoder
from toklip_plugin.models.teacher import OpenCLIPViTTeacher, build_teacher
from toklip_plugin.train import Trainer
from toklip_plugin.train.config import load_train_config
from toklip_plugin.train.student import build_student

IMAGE, WIDTH, DEPTH, EMBED = 64, 64, 2, 32
GRID = IMAGE // 16
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}
# open_clip's model_cfg of a tiny ViT-B-16-shaped CLIP (patch 16, class token, 'tok' pooling, GELU, eps 1e-5)
MODEL_CFG = {"embed_dim": EMBED, "text_cfg": TEXT,
             "vision_cfg": {"image_size": IMAGE, "patch_size": 16, "width": WIDTH, "layers": DEPTH, "head_width": 16}}
# the student: the real ablation config (toklip-b16-openclip) shrunk to the tiny teacher's sizes
STUDENT = json.dumps({"image_size": IMAGE, "embed_dim": EMBED, "text": TEXT,
                      "vq": {"codebook_size": 1024, "ch": 32, "z_channels": 64, "num_res_blocks": 1},
                      "encoder": {"width": WIDTH, "depth": DEPTH, "heads": 4}})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> tuple[CLIP, Path]:
    """A tiny open_clip CLIP with every weight random (LayerNorms included), saved as an open_clip ``local-dir``
    (``open_clip_config.json`` + weights in CLIP's own layout); the in-memory model returns its tokens too."""
    torch.manual_seed(0)
    clip = CLIP(EMBED, {**MODEL_CFG["vision_cfg"], "output_tokens": True}, TEXT).eval()
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("vit-tiny")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG}))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return clip, folder


def _train_config(folder: Path, *extra: str, name: str = "toklip-b16-base"):
    return load_train_config(name, [f"teacher.open_clip=local-dir:{folder}", "teacher.pretrained=null",
                                    "model.vq_checkpoint=null", f"model.overrides={STUDENT}", *extra])


def _teacher(folder: Path) -> OpenCLIPViTTeacher:
    config = _train_config(folder)
    return build_teacher(config.teacher, config.model_config())


def test_the_teacher_gives_open_clips_pooled_embedding_and_ln_post_patch_tokens(clip_dir):
    clip, folder = clip_dir
    teacher = _teacher(folder)
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, tokens = teacher.image_features(images)
        want_pooled, want_tokens = clip.visual(images)  # open_clip's forward with output_tokens
    assert isinstance(teacher, OpenCLIPViTTeacher) and teacher.image_size == IMAGE
    assert pooled.shape == (3, EMBED) and tokens.shape == (3, GRID * GRID, WIDTH)  # no class token
    torch.testing.assert_close(pooled, want_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens, want_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(teacher.encode_image(images, normalize=True),
                               torch.nn.functional.normalize(want_pooled, dim=-1), rtol=1e-5, atol=1e-6)


def test_the_teacher_encodes_text_like_open_clip_and_is_frozen(clip_dir):
    clip, folder = clip_dir
    teacher = _teacher(folder)
    ids = torch.randint(1, 49000, (2, TEXT["context_length"]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_text(ids), clip.encode_text(ids), rtol=1e-5, atol=1e-6)
    assert teacher.logit_scale.item() == pytest.approx(clip.logit_scale.item()) and teacher.logit_bias is None
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("source", ["teacher", "file"])
def test_student_encoder_and_text_tower_equal_the_open_clip_weights_by_name(clip_dir, source):
    """From the teacher (open_clip's CustomTextCLIP layout, text under ``text.*``) or from the weights file
    itself (CLIP's layout, text transformer at the top level, as open_clip's released ViT-B-16 files are)."""
    clip, folder = clip_dir
    if source == "teacher":
        model = build_student(_train_config(folder), _teacher(folder))
    else:
        weights = folder / "open_clip_model.safetensors"
        model = build_student(_train_config(folder, f"model.init={weights}", f"model.text_init={weights}"), None)
    ours, theirs = model.state_dict(), clip.state_dict()  # the CLIP's own layout, not the teacher's
    pairs = {"encoder.class_embedding": "visual.class_embedding", "encoder.proj": "visual.proj",
             "encoder.norm_pre.weight": "visual.ln_pre.weight", "encoder.norm_pre.bias": "visual.ln_pre.bias",
             "encoder.norm.weight": "visual.ln_post.weight", "encoder.norm.bias": "visual.ln_post.bias"}
    block_parts = {"norm1.": "ln_1.", "attn.qkv.": "attn.in_proj_", "attn.proj.": "attn.out_proj.",
                   "norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
    for i in range(DEPTH):
        for mine, open_clip_part in block_parts.items():
            for kind in ("weight", "bias"):
                pairs[f"encoder.blocks.{i}.{mine}{kind}"] = f"visual.transformer.resblocks.{i}.{open_clip_part}{kind}"
    for key in theirs:
        if not key.startswith("visual.") and key != "logit_scale":  # CLIP's top-level text transformer
            pairs["text." + key] = key
    pairs["logit_scale"] = "logit_scale"
    for mine, open_clip_name in pairs.items():
        assert torch.equal(ours[mine], theirs[open_clip_name]), mine
    pos = theirs["visual.positional_embedding"]  # class row first there, last here
    assert torch.equal(ours["encoder.pos_embed"][0], torch.cat([pos[1:], pos[:1]]))
    assert model.logit_bias is None
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_init_from_weights_of_neither_layout_names_both_layouts(clip_dir, tmp_path):
    _, folder = clip_dir
    path = tmp_path / "other.safetensors"
    save_file({"visual.layers.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match=r"neither open_clip ViT blocks .*visual\.transformer\.resblocks.*"
                                              r"SigLIP2 ones"):
        build_student(_train_config(folder, f"model.init={path}", "model.text_init=null"), None)


@pytest.mark.slow
def test_ablation_config_with_pooled_and_token_distillation_trains_with_finite_losses(clip_dir, tmp_path):
    _, folder = clip_dir
    csv_path = write_csv(make_samples(16, seed=5, size=IMAGE), tmp_path / "data")
    config = _train_config(folder, "data.kind=csv", f"data.train={csv_path}", "data.min_size=null",
                           "data.workers=0", "optim.epochs=null", "optim.steps=3", "optim.batch_size=8",
                           "optim.warmup_steps=1", "optim.lr=1e-4", "run.precision=fp32", "run.device=cpu",
                           "run.report_to=none", f"run.output_dir={tmp_path / 'run'}",
                           name="toklip-b16-token-distill")
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    trainer.student.train()
    batches = trainer.batches()
    steps = [trainer.train_step(batches) for _ in range(3)]
    for metrics in steps:
        assert {"contrastive", "distill", "token_distill"} <= set(metrics)
        assert all(math.isfinite(metrics[k]) for k in ("contrastive", "distill", "token_distill", "total"))
        assert not metrics.get("nonfinite")
    assert steps[0]["distill"] > 0 and steps[0]["token_distill"] > 0  # the teacher's targets are not the student's
    after = trainer.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_incremental_steps_of_a_class_token_encoder_with_norm_pre_equal_its_full_forward(clip_dir):
    _, folder = clip_dir
    model = tp.create_model(_train_config(folder).model_config(), seed=3).eval()
    with torch.no_grad():
        for param in model.encoder.norm_pre.parameters():  # a norm_pre that is not the identity at init
            param.add_(0.5 * torch.randn_like(param))
    assert model.encoder.config.has_class_token and model.encoder.config.norm_pre
    codes = torch.randint(0, 1024, (2, GRID * GRID), generator=torch.Generator().manual_seed(4))
    cached = CachedTokenEncoder(model.encoder, model.vq.quantize.codebook())
    cached.setup_cache(max_batch_size=2, dtype=torch.float32)
    with torch.no_grad():
        stepped = torch.cat([cached.step(codes[:, j:j + 1], torch.tensor([j])) for j in range(codes.shape[1])], 1)
        tokens_with_class_token_in_the_sequence = model.encode_codes_and_pool(codes)[0]
    torch.testing.assert_close(stepped, tokens_with_class_token_in_the_sequence, rtol=1e-5, atol=1e-5)
