"""TokLIP in LLaVA (haotian-liu, PyPI ``llava-torch`` 1.2.2): vision tower, Qwen2 LLMs, loading.

Setup once per environment (LLaVA's pins are stale, so it is installed without deps)::

    pip install --no-deps llava-torch==1.2.2.post1 && pip install "toklip-plugin[llava]"
    toklip-patch llava          # entry-point lookups + fixes for current transformers

Then LLaVA's own scripts take ``--vision_tower toklip-l`` (or ``toklip-s``, ``toklip-tiny``,
``toklip-l:/path/TokLIP_L_384.pt``, ``toklip:/path/saved_dir``; see ``tower.py``) and, for
``--model_name_or_path Qwen/Qwen2.5-7B-Instruct``, ``--version qwen_2`` (see ``qwen2.py``).
Launch scripts for the paper's recipes are in ``configs/llava/``.

Modules (each imports LLaVA / transformers only when used):

- ``tower``: ``TokLIPVisionTower`` and ``build_toklip_tower`` (entry point ``llava.vision_towers``);
- ``qwen2``: ``LlavaQwen2ForCausalLM`` (entry point ``llava.language_models``) and the
  ``qwen_2`` template from ``chatml``;
- ``unified``: ``LlavaQwen2UnifiedForCausalLM`` (``model_type`` ``llava_qwen2_unified``, entry point
  ``qwen2_unified``): the Qwen2 LLaVA that also writes images as the tower's VQ codes, reading
  TokLIP's causal features of its own codes; ``image_generation``: ``generate_image(model,
  tokenizer, captions, cfg_scale=...)`` -> codes and decoded images (CFG, batched prompts, KV caches);
  ``unified_template``: the ``qwen_2_unified`` data template (images to draw in assistant turns, caption
  dropout); ``unified_base``: the converted Qwen2 base train.py starts the unified model from;
- ``loading``: ``load_llava_model(path, device="cpu", dtype=None)`` returns LLaVA's
  ``(tokenizer, model, image_processor, context_len)`` for a trained checkpoint with a TokLIP
  tower and a Llama or Qwen2 LLM, with a dtype that works on the device (float32 on CPU,
  float16 on CUDA) and the tower on the same device and dtype; ``conversation_mode(model)``
  names the prompt template to use with it (``qwen_2`` or ``vicuna_v1``). This is the entry
  for evaluation code such as the lmms-eval model.
"""
from .loading import conversation_mode, load_llava_model
from .tower import TokLIPVisionTower, build_toklip_tower

__all__ = ["TokLIPVisionTower", "build_toklip_tower", "load_llava_model", "conversation_mode"]
