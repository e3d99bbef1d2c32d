"""RLP's Megatron-facing machinery: the adapters that run the pure objective of ``nemo_smartpt.rlp`` inside
megatron-core / Megatron-Bridge ``pretrain()``.

``logprobs`` (vocab-parallel log-probs under TP), ``rollout`` (shared-prefix KV-cache sampler over the live model),
``dynamic_rollout`` (megatron-core's dynamic inference engine with prefix caching, the GPU generation path),
``prepare`` (positions → rollouts → scoring rows → S_ema, per micro-batch), ``step`` (the Megatron forward step and
loss; runs under TP and PP), ``pipeline`` (stage-to-stage generation and preparation ahead of the schedule under PP),
``callbacks`` (Bridge ``pretrain()`` wiring: ``build_rlp_training``, EMA lifecycle, metrics; TP, PP and DP),
``shared_attention`` (``rlp.shared_prefix_forward``: the grouped training forward, each context encoded once).

Import the modules explicitly; megatron itself is imported lazily inside them.
"""
