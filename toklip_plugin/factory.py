"""Names, files and configs -> models, transforms and tokenizers (open_clip's factory, for TokLIP)."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from . import checkpoints as ckpt
from .config import TokLIPConfig, get_model_config, list_models, load_config_file
from .models.text import build_tokenizer
from .models.toklip import TokLIP
from .models.vq import VQModel
from .transforms import image_transform

__all__ = ["list_models", "resolve_config", "saved_directory", "create_model", "create_vq", "load_toklip", "get_tokenizer",
           "get_transform"]

ModelSource = Union[str, Path, TokLIPConfig]
RELEASED = "released"  # checkpoint= value meaning: the released weights named in the config


def resolve_config(source: ModelSource) -> TokLIPConfig:
    """A config from a name, a saved TokLIP directory, a JSON/YAML file, or a config object.

    A built-in name wins over a file or folder of that name in the working directory, unless the argument
    is written as a path (``./toklip-tiny``, ``runs/toklip-tiny``): the same command means the same model
    wherever it runs.
    """
    if isinstance(source, TokLIPConfig):
        return source
    if _is_builtin_name(source):
        if Path(source).exists():
            warnings.warn(f"{source!r} is the built-in TokLIP config; the {source!r} in the working directory is "
                          f"not read (write ./{source} to load it)", stacklevel=2)
        return get_model_config(str(source))
    path = Path(source)
    if path.is_dir():
        return ckpt.read_pretrained_config(path)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        return load_config_file(path)
    raise ValueError(f"{source!r} is neither a known TokLIP name ({', '.join(list_models())}), "
                     "a saved TokLIP directory, nor a .json/.yaml config file")


def _is_builtin_name(source: Union[str, Path]) -> bool:
    """Whether ``source`` names a built-in config: a known name not written as a path (a ``Path``, a separator
    or a leading ``.``)."""
    text = str(source)
    looks_like_path = isinstance(source, Path) or os.sep in text or "/" in text or text.startswith(".")
    return not looks_like_path and text in list_models()


def saved_directory(source: ModelSource) -> Optional[Path]:
    """The ``save_pretrained`` directory ``source`` names, if it names one rather than a config."""
    if isinstance(source, TokLIPConfig) or _is_builtin_name(source) or not Path(source).is_dir():
        return None
    return Path(source)


def create_model(config: TokLIPConfig, seed: Optional[int] = None) -> TokLIP:
    """A randomly initialised TokLIP (``seed`` makes the initialisation reproducible)."""
    with _seeded(seed):
        return TokLIP(config)


def create_vq(config: TokLIPConfig, seed: Optional[int] = None) -> VQModel:
    """The VQ of ``create_model(config, seed)`` alone, for jobs that need only the frozen tokenizer.

    TokLIP builds its VQ first, so the same seed gives the same random VQ weights (a real run loads
    a VQ checkpoint over them).
    """
    with _seeded(seed):
        return VQModel(config.vq)


@contextlib.contextmanager
def _seeded(seed: Optional[int]) -> Iterator[None]:
    """Draw from ``seed`` inside the block without touching the global RNG (no-op for ``None``)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_toklip(
    source: ModelSource = "toklip-tiny",
    checkpoint: Union[str, Path, None] = None,
    vq_checkpoint: Union[str, Path, None] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TokLIP:
    """Build a TokLIP in eval mode.

    ``source``: a name from :func:`list_models`, a directory written by ``save_pretrained``
    (its weights are loaded), a config file or a config object.
    ``checkpoint``: a released-layout ``.pt``, one of our directories / ``.safetensors``,
    or ``"released"`` for the weights named in the config (``$TOKLIP_HOME``, then the Hub).
    ``vq_checkpoint``: a LlamaGen VQ checkpoint for the VQ part, or ``"released"``.
    Without either the weights are random, as in ``open_clip.create_model`` without ``pretrained``.
    """
    config = resolve_config(source)
    model = create_model(config)
    directory = saved_directory(source)
    if directory is not None:
        ckpt.load_pretrained_dir(model, directory)
    if checkpoint is not None:
        ckpt.load_any_checkpoint(model, _weight_path(config, checkpoint, "checkpoint"))
    if vq_checkpoint is not None:
        ckpt.load_vq_checkpoint(model.vq, _weight_path(config, vq_checkpoint, "vq_checkpoint"))
    return model.to(device=device, dtype=dtype).eval()


def _weight_path(config: TokLIPConfig, value: Union[str, Path], kind: str) -> Path:
    if str(value) != RELEASED:
        return ckpt.resolve_weight_file(value)
    if kind not in config.weights:
        raise ValueError(f"config {config.name!r} names no released {kind}; pass a file path instead")
    return ckpt.resolve_weight_file(config.weights[kind])


def get_tokenizer(source: ModelSource, tokenizer_path: Optional[str] = None) -> Callable:
    """The text tokenizer matching a config: ``tokenizer(list_of_str) -> LongTensor [B, L]``."""
    config = resolve_config(source)
    return build_tokenizer(config.tokenizer, config.text["context_length"], tokenizer_path)


def get_transform(source: ModelSource):
    """The image transform (PIL -> ``[3, S, S]`` in [-1, 1]) matching a config."""
    return image_transform(resolve_config(source).image_size)
