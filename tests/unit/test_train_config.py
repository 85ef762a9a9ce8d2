"""Train configs: every shipped YAML parses; overrides, bases and unknown keys behave."""
from __future__ import annotations

import pytest

from toklip_plugin.train.config import list_train_configs, load_train_config


@pytest.mark.parametrize("name", list_train_configs())
def test_every_shipped_train_config_parses_and_builds_its_model_config(name):
    config = load_train_config(name)
    model_config = config.model_config()
    assert model_config.embed_dim == model_config.encoder.width or model_config.encoder.proj
    assert config.optim.batch_size % config.optim.accum_steps == 0


def test_paper_recipes_match_table_a1():
    for name, size, batch in (("toklip-s-256", 256, 1792), ("toklip-l-384", 384, 512)):
        config = load_train_config(name)
        assert config.model_config().image_size == size
        assert (config.optim.lr, config.optim.weight_decay, config.optim.betas) == (1e-5, 0.1, (0.9, 0.98))
        assert (config.optim.warmup_steps, config.optim.batch_size) == (500, batch)
        assert config.teacher.open_clip.endswith(f"SigLIP2-{size}")


def test_a_run_of_fixed_steps_can_replace_a_recipes_epochs_on_the_command_line():
    config = load_train_config("toklip-b16-base", ["optim.epochs=null", "optim.steps=100"])
    assert config.optim.total_steps(config.data.num_samples) == 100
    with pytest.raises(ValueError, match="optim.epochs=null"):
        load_train_config("toklip-b16-base", ["optim.steps=100"])


def test_overrides_are_yaml_values_and_nest_into_sections():
    config = load_train_config("toklip-tiny", ["optim.lr=1e-4", "model.overrides={encoder: {causal: false}}",
                                               "run.grad_checkpointing=true", "model.init=null"])
    assert config.optim.lr == 1e-4
    assert config.model_config().encoder.causal is False
    assert config.run.grad_checkpointing is True
    assert config.model.init is None


def test_unknown_keys_and_bad_values_are_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_typo'\] in train-config section 'optim'"):
        load_train_config("toklip-tiny", ["optim.lr_typo=1"])
    with pytest.raises(ValueError, match="section"):
        load_train_config("toklip-tiny", ["optimizer.lr=1"])
    with pytest.raises(ValueError, match="loss.contrastive"):
        load_train_config("toklip-tiny", ["loss.contrastive=cosine"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_train_config("toklip-tiny", ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="toklip-tiny"):
        load_train_config("no-such-config")


def test_a_file_may_start_from_a_named_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: toklip-tiny\noptim:\n  steps: 3\n")
    config = load_train_config(path)
    assert config.optim.steps == 3
    assert config.optim.batch_size == load_train_config("toklip-tiny").optim.batch_size


@pytest.mark.parametrize("override, message", [
    ("optim.batch_size=0", "optim.batch_size must be an integer >= 1; got 0"),  # hung: an empty batch never fills
    ("run.save_every=0", "run.save_every must be an integer >= 1; got 0"),  # ZeroDivisionError in step % save_every
    ("run.log_every=0", "run.log_every must be an integer >= 1; got 0"),  # ZeroDivisionError
    ("optim.accum_steps=0", "optim.accum_steps must be an integer >= 1; got 0"),  # ZeroDivisionError
    ("optim.steps=-5", "optim.steps must be an integer >= 1 or null; got -5"),  # exported a random model, exit 0
    ("optim.steps=abc", "optim.steps must be an integer >= 1 or null; got 'abc'"),  # TypeError in the trainer
    ("optim.steps=true", "optim.steps must be an integer >= 1 or null; got True"),  # YAML true is no step count
    ("model.overrides={image_size: 0}", "image_size must be an integer >= 1; got 0"),  # accepted: an empty grid
    ("model.overrides={image_size: -1}", "image_size must be an integer >= 1; got -1"),
    ("optim.lr=0", "optim.lr must be a number > 0; got 0"),
    ("optim.lr=nan", "optim.lr must be a number > 0; got 'nan'"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be an integer >= 0; got -1"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1] must be a number >= 0 and < 1; got 1.0"),
    ("run.collective_timeout_s=0", "run.collective_timeout_s must be a number > 0; got 0"),
])
def test_a_value_out_of_type_or_range_is_refused_when_parsed_naming_key_value_and_range(override, message):
    with pytest.raises(ValueError) as err:
        load_train_config("toklip-tiny", [override])
    assert message in str(err.value)


def test_zero_keeps_its_documented_meaning_where_it_means_off():
    config = load_train_config("toklip-tiny", ["run.eval_every=0", "run.keep_last=0", "run.text_cache_size=0",
                                               "optim.warmup_steps=0", "optim.grad_clip=0", "data.workers=0"])
    assert (config.run.eval_every, config.run.keep_last, config.run.text_cache_size) == (0, 0, 0)
    assert (config.optim.warmup_steps, config.optim.grad_clip) == (0, 0.0)


def test_numbers_are_stored_with_their_declared_type():
    """YAML 1.1 reads 1e-4 (no dot) as a string and 1e3 as a string too; both mean numbers."""
    config = load_train_config("toklip-tiny", ["optim.lr=1e-4", "optim.steps=1e3", "optim.batch_size=16.0"])
    assert config.optim.lr == 1e-4 and type(config.optim.lr) is float
    assert config.optim.steps == 1000 and type(config.optim.steps) is int
    assert config.optim.batch_size == 16 and type(config.optim.batch_size) is int
    with pytest.raises(ValueError, match=r"optim.batch_size must be an integer >= 1; got 16.5"):
        load_train_config("toklip-tiny", ["optim.batch_size=16.5"])
