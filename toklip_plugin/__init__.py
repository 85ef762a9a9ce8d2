"""TokLIP as a plugin for LLaVA, LlamaGen, lmms-eval and open_clip users.

    import toklip_plugin as tp
    model = tp.load_toklip("toklip-l", checkpoint="released")
    codes = model.tokenize(images)            # LlamaGen VQ-16 codes [B, N]
    tokens = model.encode_codes(codes)        # causal semantic tokens [B, N, d]
"""
from .config import TokLIPConfig, list_models
from .factory import RandomWeightsWarning, create_model, get_tokenizer, get_transform, load_toklip, resolve_config
from .integrations.open_clip import register as _register_with_open_clip
from .models.toklip import TokLIP
from .open_clip_api import create_model_and_transforms, create_model_from_pretrained, list_pretrained
from .transforms import image_transform

__version__ = "0.1.0"

_register_with_open_clip()  # stock open_clip / timm build TokLIP by name (integrations/open_clip)

__all__ = [
    "TokLIP",
    "TokLIPConfig",
    "list_models",
    "load_toklip",
    "RandomWeightsWarning",
    "create_model",
    "resolve_config",
    "get_tokenizer",
    "get_transform",
    "image_transform",
    "create_model_and_transforms",
    "create_model_from_pretrained",
    "list_pretrained",
]
