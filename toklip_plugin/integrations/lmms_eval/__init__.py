"""lmms-eval model ``toklip_llava``: a LLaVA checkpoint with a TokLIP vision tower (Llama or Qwen2 LLM).

    lmms-eval eval --model toklip_llava --model_args pretrained=/path/llava-toklip-l-qwen2.5-7b \\
        --tasks pope,mme --batch_size 1 --output_path results/

Registered by the entry point ``toklip_llava`` in the ``lmms_eval.models`` group (``manifest``):
lmms-eval runs the chat class ``model.TokLIPLlava``, or under ``--force_simple`` (which
multiple-choice, ``loglikelihood`` tasks need) the legacy class ``model.TokLIPLlavaSimple``. Needs ``pip install "toklip-plugin[lmms,llava]"`` and
``toklip-patch llava``. Benchmark commands for the paper's tables: ``eval/README.md``.
"""
