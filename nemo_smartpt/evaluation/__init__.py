"""Evaluation through lm-evaluation-harness: a ``smartpt`` model adapter over a Megatron model or checkpoint.

- :mod:`.scoring`: the tensor work on a Megatron ``GPTModel`` (batched log-likelihood of continuations and greedy
  decoding), tensor-parallel aware: log-probabilities with megatron-core's ``vocab_parallel_cross_entropy`` and the
  greedy token with a vocab-parallel argmax, so no rank ever holds the full-vocabulary logits of a batch.
- :mod:`.lm`: ``SmartptLM``, an ``lm_eval`` ``TemplateLM`` registered as ``smartpt`` (``loglikelihood``,
  ``loglikelihood_rolling``, ``generate_until``).
- :mod:`.checkpoint`: a ``smartpt train`` run directory -> the model (Megatron-Bridge's own checkpoint loader) and
  the tokenizer the data was prepared with.
- :mod:`.harness`: runs lm-eval's ``simple_evaluate`` on local task YAMLs (offline) and returns its results JSON.
- :mod:`.eval_cli`: ``smartpt eval``.
"""
