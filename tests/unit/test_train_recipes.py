"""The shipped training recipes: each names the paper table row it reproduces, derives its step count the way
open_clip_train does, and each ablation differs from its base in exactly what its row varies."""
from __future__ import annotations

import math
import re

import pytest

from toklip_plugin.resources import data_dir
from toklip_plugin.train.config import DataSection, OptimSection, list_train_configs, load_train_config

PAPER_LINE = re.compile(r"^# paper: (.+)$", re.MULTILINE)
NOT_PAPER_ROWS = {"toklip-tiny"}  # the tests' and demo's setting


def _paper_line(name: str) -> str:
    lines = PAPER_LINE.findall((data_dir("configs") / "train" / f"{name}.yaml").read_text())
    assert len(lines) == 1, f"{name}.yaml must have exactly one '# paper:' line"
    return lines[0]


@pytest.mark.parametrize("name", list_train_configs())
def test_every_recipe_names_its_table_row(name):
    line = _paper_line(name)
    if name in NOT_PAPER_ROWS:
        assert line.startswith("none")
    else:
        assert re.match(r'Table (A1|5|6|B2), (row "[^"]+"|TokLIP-[SL] )', line), line


@pytest.mark.parametrize("name", list_train_configs())
def test_every_recipe_derives_its_steps_from_epochs_and_samples(name):
    config = load_train_config(name)
    optim = config.optim
    total = optim.total_steps(config.data.num_samples)
    if optim.epochs is None:
        assert total == optim.steps
    else:
        assert total == optim.epochs * math.ceil(config.data.num_samples / optim.batch_size)
        assert abs(total - optim.epochs * config.data.num_samples / optim.batch_size) < optim.epochs


def test_paper_recipes_train_the_paper_objective_for_the_samples_table_a1_gives():
    for name, samples, steps in (("toklip-s-256", 125_000_000, 69_755), ("toklip-l-384", 80_000_000, 156_250)):
        config = load_train_config(name)
        assert config.optim.epochs * config.data.num_samples == samples
        assert config.optim.total_steps(config.data.num_samples) == steps
        assert (config.loss.contrastive, config.loss.distill_weight) == ("infonce", 1000.0)
        assert not config.model_config().has_logit_bias
        assert (config.optim.grad_clip, config.optim.decay_pos_embed, config.run.precision) == (None, True, "fp16")
        assert config.data.min_size == 300


def _flat(data, prefix=""):
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _settings(name: str) -> dict:
    """Every effective setting of a recipe, its model config resolved (``model.overrides`` merged in)."""
    config = load_train_config(name)
    raw = config.to_dict()
    del raw["model"]["overrides"]
    return {**_flat(raw), **_flat(config.model_config().to_dict(), "model_config.")}


def _changed(name: str, base: str) -> dict:
    """Settings in which ``name`` differs from ``base`` (output directories aside)."""
    a, b = _settings(name), _settings(base)
    return {k: a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "run.output_dir"}


BIDIRECTIONAL = {"model_config.encoder.causal": False}
TOKEN_DISTILL = {"loss.token_distill_weight": 10.0, "loss.token_distill_normalize": False}
CODEBOOK = {"model_config.encoder.mapping": "codebook"}


@pytest.mark.parametrize("name,base,changes", [
    ("toklip-b16-noinit-mlp", "toklip-b16-base", {"model.init": None, "loss.distill_weight": 0.0}),
    ("toklip-b16-noinit-codebook", "toklip-b16-base", {"model.init": None, "loss.distill_weight": 0.0, **CODEBOOK}),
    ("toklip-b16-codebook", "toklip-b16-base", CODEBOOK),
    ("toklip-b16-contrastive-only", "toklip-b16-base", {"loss.distill_weight": 0.0}),
    ("toklip-b16-token-distill", "toklip-b16-base", TOKEN_DISTILL),
    ("toklip-b16-bidirectional", "toklip-b16-base", BIDIRECTIONAL),
    ("toklip-b16-cc12m", "toklip-b16-base", {"data.num_samples": 10968539}),
    ("toklip-b16-cc12m-bidirectional", "toklip-b16-base", {"data.num_samples": 10968539, **BIDIRECTIONAL}),
    ("toklip-b16-bidirectional-token-distill", "toklip-b16-base", {**TOKEN_DISTILL, **BIDIRECTIONAL}),
])
def test_each_ablation_changes_exactly_what_its_row_varies(name, base, changes):
    assert _changed(name, base) == changes


def test_the_ablation_base_is_the_openclip_vit_b16_with_the_paper_objective():
    config = load_train_config("toklip-b16-base")
    model = config.model_config()
    assert model.name == "toklip-b16-openclip" and model.encoder.causal and model.encoder.mapping == "mlp"
    assert (config.teacher.open_clip, config.model.init) == ("ViT-B-16", "teacher")
    assert (config.loss.contrastive, config.loss.distill_weight) == ("infonce", 1000.0)
    assert config.data.num_samples == 2905954  # CC3M


def test_steps_and_epochs_exclude_each_other_and_epochs_need_the_sample_count():
    with pytest.raises(ValueError, match="optim.epochs=null"):
        OptimSection(steps=10, epochs=2)
    with pytest.raises(ValueError, match="data.num_samples"):
        OptimSection(epochs=2).total_steps(None)
    with pytest.raises(ValueError, match="no length"):
        OptimSection().total_steps(1000)
    assert OptimSection(epochs=3, batch_size=4).total_steps(10) == 9  # 3 steps per epoch, the last one partial


def test_min_size_keeps_an_image_only_when_both_sides_reach_it():
    data = DataSection(min_size=300)
    assert data.keeps_image(300, 300) and data.keeps_image(640, 480)
    assert not data.keeps_image(299, 1000) and not data.keeps_image(1000, 120)
    assert DataSection().keeps_image(1, 1)
    with pytest.raises(ValueError, match="data.min_size"):
        DataSection(min_size=0)
