"""TokLIP inside LlamaGen's own scripts, reached through entry points (no LlamaGen import here).

- ``vq``: ``VQ_models['toklip']``, LlamaGen's VQ-16 that also loads a TokLIP checkpoint;
- ``gpt``: LlamaGen's GPT re-implemented with its names and contract (weights load unchanged);
- ``fused``: ``GPT-B-toklip`` ... : the GPT reading code embedding + TokLIP feature;
- ``cached_encoder``: TokLIP's causal encoder stepped one code at a time with a KV cache;
- ``sampling``: a sampler making the calls LlamaGen's ``generate()`` makes (tests, benchmark).

``toklip-patch llamagen --target <checkout>`` teaches LlamaGen's ``VQ_models`` / ``GPT_models``
to look the entry points up; recipes for the paper's runs are in ``configs/llamagen/``.
"""
