"""Training the TokLIP tokenizer (paper Section 3.1), above the core and evaluation layers.

    from toklip_plugin.train import Trainer, load_train_config
    Trainer(load_train_config("toklip-tiny", ["run.output_dir=runs/tiny"])).fit()
"""
from .code_cache import build_code_cache
from .config import TrainConfig, list_train_configs, load_train_config
from .targets import FrozenTargets
from .trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "FrozenTargets", "build_code_cache", "list_train_configs", "load_train_config"]
