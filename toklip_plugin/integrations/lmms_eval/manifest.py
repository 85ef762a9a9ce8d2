"""lmms-eval registration of ``toklip_llava`` (entry point group ``lmms_eval.models``).

lmms-eval imports this module while importing ``lmms_eval.models``, so it stays light: the
model class is named by its dotted path and imported only when the model is requested.
"""
from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(
    model_id="toklip_llava",
    simple_class_path="toklip_plugin.integrations.lmms_eval.model.TokLIPLlava",
)
