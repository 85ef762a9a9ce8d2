"""open_clip's way in, for TokLIP: ``create_model_and_transforms``, ``create_model_from_pretrained``,
``list_pretrained`` (``get_tokenizer`` is the factory's), with open_clip's argument names and return values.

Code written against ``open_clip`` reads the same with ``toklip_plugin`` in its place. The model is our
:class:`~toklip_plugin.models.toklip.TokLIP` (``encode_image`` / ``encode_text`` as in open_clip, plus
``tokenize`` / ``encode_codes``); the transforms are TokLIP's (images in [-1, 1]). ``pretrained`` takes
what ``load_toklip``'s ``checkpoint`` takes: ``"released"`` (the weights the config names), a
released-layout ``.pt``, or one of our directories / ``.safetensors``. Stock ``open_clip`` itself builds
TokLIP too once ``toklip_plugin`` is imported (``toklip_plugin.integrations.open_clip``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

import torch

from .config import get_model_config, list_models
from .factory import RELEASED, ModelSource, saved_directory, load_toklip, resolve_config
from .models.toklip import TokLIP
from .precision import parse_dtype
from .transforms import image_transform, train_transform

__all__ = ["create_model_and_transforms", "create_model_from_pretrained", "list_pretrained"]

Weights = Union[str, Path, None]


def create_model_and_transforms(
    model_name: ModelSource,
    pretrained: Weights = None,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
) -> tuple[TokLIP, Callable, Callable]:
    """``(model, preprocess_train, preprocess_val)`` as ``open_clip.create_model_and_transforms`` returns them.

    ``model_name``: a name from :func:`toklip_plugin.list_models`, a saved directory or a config file.
    ``pretrained=None`` builds random weights (as open_clip does); :func:`create_model_from_pretrained`
    refuses to. ``precision``: the parameter dtype (``fp32``, ``bf16``, ``fp16``).
    """
    model = load_toklip(model_name, checkpoint=pretrained, device=device, dtype=parse_dtype(precision))
    return model, train_transform(model.image_size), image_transform(model.image_size)


def create_model_from_pretrained(
    model_name: ModelSource,
    pretrained: Weights = None,
    precision: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    return_transform: bool = True,
) -> Union[TokLIP, tuple[TokLIP, Callable]]:
    """``(model, preprocess_val)`` (or the model alone) with real weights, never random ones.

    Without ``pretrained`` the config's released weights are used (``"released"``), or the weights inside a
    saved directory; a config that names none raises a ``ValueError`` saying what to pass.
    """
    model, _, preprocess = create_model_and_transforms(model_name, _required_weights(model_name, pretrained),
                                                       precision, device)
    return (model, preprocess) if return_transform else model


def _required_weights(model_name: ModelSource, pretrained: Weights) -> Weights:
    if pretrained is not None or saved_directory(model_name) is not None:  # a saved directory holds its weights
        return pretrained
    config = resolve_config(model_name)
    if "checkpoint" in config.weights:
        return RELEASED
    raise ValueError(
        f"{config.name!r} has no released weights, and create_model_from_pretrained never builds random ones: "
        "pass pretrained= a released-layout .pt, a saved TokLIP directory or a .safetensors file "
        "(or use create_model_and_transforms(..., pretrained=None) for random weights)")


def list_pretrained(as_str: bool = False) -> Union[list[tuple[str, str]], list[str]]:
    """``[(name, pretrained), ...]`` for the built-in configs with released weights, as open_clip lists
    ``(architecture, tag)`` pairs; ``as_str`` gives ``"name:pretrained"`` strings."""
    pairs = [(name, RELEASED) for name in list_models() if "checkpoint" in get_model_config(name).weights]
    return [f"{name}:{tag}" for name, tag in pairs] if as_str else pairs
