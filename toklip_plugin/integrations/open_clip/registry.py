"""TokLIP's names in stock open_clip's model-config registry and timm's model registry.

After :func:`register` (``import toklip_plugin`` runs it), the call the official TokLIP code makes works on
the PyPI packages::

    model, _, preprocess = open_clip.create_model_and_transforms("toklip-l", pretrained="TokLIP_L_384.pt")
    tokenizer = open_clip.get_tokenizer("toklip-l")

for our names (``toklip-s``, ``toklip-l``, ...) and the official config names
(``ViT-SO400M-16-SigLIP2-256-toklip``, ``ViT-SO400M-16-SigLIP2-384-toklip``, the architectures of
``toklip-s`` / ``toklip-l``). Each name is an open_clip model config (``CustomTextCLIP``: a timm vision tower,
:class:`~toklip_plugin.integrations.open_clip.trunk.TokLIPTrunk`, and open_clip's own text transformer), so the
model's keys are the released layout and open_clip's ``load_checkpoint`` loads released-layout files strictly.

open_clip's public registry reads JSON files (``open_clip.add_model_config``), so the configs are data in
``configs/open_clip/``, generated from ``configs/models/`` by :func:`write_model_configs`
(``python -m toklip_plugin.integrations.open_clip``); a test keeps the two in step.

open_clip normalises images with OpenAI's mean and std unless told otherwise; TokLIP reads images in
[-1, 1]: pass ``image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)`` to
``open_clip.create_model_and_transforms`` (or use ``toklip_plugin.create_model_and_transforms``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...config import TokLIPConfig, get_model_config, list_models
from ...resources import data_dir
from .trunk import TIMM_POOL, register_timm_models

__all__ = ["OFFICIAL_NAMES", "open_clip_models", "open_clip_model_config", "write_model_configs", "model_config_dir",
           "register"]

# the official repository's open_clip config name -> (our config of the same architecture, its timm model name)
OFFICIAL_NAMES = {
    "ViT-SO400M-16-SigLIP2-256-toklip": ("toklip-s", "vit_so400m_patch16_toklip_256"),
    "ViT-SO400M-16-SigLIP2-384-toklip": ("toklip-l", "vit_so400m_patch16_toklip_384"),
}


def open_clip_models() -> dict[str, tuple[str, str]]:
    """Every open_clip name we register -> (TokLIP config name, timm model name)."""
    ours = {name: (name, name.replace("-", "_")) for name in list_models()}
    return {**ours, **OFFICIAL_NAMES}


def open_clip_model_config(config: TokLIPConfig, timm_name: str) -> dict[str, Any]:
    """The open_clip model config (``model_configs/*.json`` layout) of a TokLIP config."""
    text_cfg = dict(config.text)
    if config.tokenizer.get("kind") == "hf":  # open_clip passes tokenizer_kwargs on to HFTokenizer
        kwargs = dict(config.tokenizer.get("kwargs", {}))
        if config.tokenizer.get("revision"):
            kwargs["revision"] = config.tokenizer["revision"]
        text_cfg.update(hf_tokenizer_name=config.tokenizer["name"], tokenizer_kwargs=kwargs)
    model_cfg = {
        "embed_dim": config.embed_dim,
        "custom_text": True,  # the text tower lives under text.*, as in the released files
        "init_logit_scale": config.init_logit_scale,
        "vision_cfg": {
            "image_size": config.image_size,
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,
            "timm_pool": TIMM_POOL[config.encoder.pool],
            "timm_proj": "none",
        },
        "text_cfg": text_cfg,
    }
    if config.has_logit_bias:
        model_cfg["init_logit_bias"] = config.init_logit_bias
    return model_cfg


def model_config_dir() -> Path:
    return Path(str(data_dir("configs"))) / "open_clip"


def write_model_configs(directory: Path) -> list[Path]:
    """Write one ``NAME.json`` per :func:`open_clip_models` entry into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (config_name, timm_name) in open_clip_models().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(open_clip_model_config(get_model_config(config_name), timm_name), indent=2) + "\n")
        written.append(path)
    return written


def register() -> None:
    """Register the timm models and the open_clip configs. Idempotent: names already known are left alone."""
    import open_clip

    models = open_clip_models()
    register_timm_models({timm_name: config_name for config_name, timm_name in models.values()})
    if not set(models) <= set(open_clip.list_models()):
        open_clip.add_model_config(model_config_dir())

