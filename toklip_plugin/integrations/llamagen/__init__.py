"""TokLIP inside LlamaGen's own scripts, reached through entry points (no LlamaGen import here).

- ``vq``: ``VQ_models['toklip']``, LlamaGen's VQ-16 that also loads a TokLIP checkpoint;
- ``gpt``: LlamaGen's GPT re-implemented with its names and contract (weights load unchanged);
- ``fused``: ``GPT-B-toklip`` ... : the GPT reading code embedding + TokLIP feature (the fusions
  and the KV-cached causal encoder it steps are in the core: ``toklip_plugin.models.fusion``,
  ``toklip_plugin.models.cached_encoder``);
- ``sampling``: a sampler making the calls LlamaGen's ``generate()`` makes (tests, benchmark).

``toklip-patch llamagen --target <checkout>`` teaches LlamaGen's ``VQ_models`` / ``GPT_models``
to look the entry points up; recipes for the paper's runs are in ``configs/llamagen/``.
"""
