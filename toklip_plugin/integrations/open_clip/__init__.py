"""Stock open_clip and timm build TokLIP: its configs in open_clip's registry, its image tower in timm's.

``import toklip_plugin`` calls :func:`register`; see :mod:`.registry` for what it registers and
:mod:`.trunk` for the timm model.
"""
from .registry import OFFICIAL_NAMES, open_clip_models, register

__all__ = ["OFFICIAL_NAMES", "open_clip_models", "register"]
