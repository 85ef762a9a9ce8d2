"""lmms-eval registration of ``toklip_llava`` (entry point group ``lmms_eval.models``).

lmms-eval imports this module while importing ``lmms_eval.models``, so it stays light: the
model classes are named by their dotted paths and imported only when the model is requested.
lmms-eval resolves a name to its chat class, or to its simple class under ``--force_simple``
(``ModelRegistryV2.resolve``).
"""
from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(
    model_id="toklip_llava",
    chat_class_path="toklip_plugin.integrations.lmms_eval.model.TokLIPLlava",
    simple_class_path="toklip_plugin.integrations.lmms_eval.model.TokLIPLlavaSimple",
)
