"""Thought rollouts through megatron-core's ``DynamicInferenceEngine`` with prefix caching (the GPU generation path).

:class:`~nemo_smartpt.rlp.megatron.rollout.KVCacheSampler` shares a group's prompt by prefilling it once and copying its cache
rows. At cluster scale the better tool is megatron-core's own dynamic engine: a paged KV cache, in-flight batching of
every rollout of every group of a micro-batch at once (finished thoughts free their slots for the others) and *prefix
caching*, which hashes complete KV blocks of a prompt so that the G requests of a group reuse the blocks of the first
one instead of recomputing them. :class:`DynamicEngineSampler` drives that engine over the live training model:

- **Same contract as the KV-cache sampler** (a :class:`~nemo_smartpt.rlp.megatron.rollout.RolloutSampler`), so :class:`~nemo_smartpt.rlp.megatron.prepare.RLPPreparer` switches
  between them with ``rlp.generation_engine``.
- **No weight copy.** The engine wraps the training ``GPTModel`` itself (inside
  :func:`~nemo_smartpt.rlp.megatron.rollout.generation_mode`). Because the weights change after every optimizer step, the
  prefix cache keeps a block only while a request of the current batch holds it (``ref_zero`` eviction) and the
  engine is ``reset()`` before each batch: cached prefix blocks from the previous weights are never reused.
- **Inference mode is scoped.** Constructing megatron's engine sets the process-wide ``InferenceMode`` flag, which
  changes code paths of the model's forward; this sampler clears it again and sets it only while generating, so the
  training forward that follows runs exactly as without an engine.
- **Memory.** The engine's KV buffer (``rlp.dynamic_buffer_size_gb``) is allocated once. With
  ``rlp.dynamic_release_kv=true`` (default) the engine is suspended after each batch in ``recompute`` mode, which
  frees the buffer for the training step's activations and reallocates it at the next generation.
- **Determinism.** The engine samples from its controller's ``torch.Generator``; it is reseeded from the caller's
  generator before each batch (which the step seeds from (seed, step, data-parallel rank, micro-batch)). Every TP
  rank draws the same seed, so TP ranks sample the same tokens, as with the KV-cache sampler.
- **Stops** at the ``</think>`` ids (any length; the stop tokens are kept in the thought) or at ``max_new_tokens``.
  The end-of-document id (``end_ids``) ends a thought too (the engine's ``termination_id``), kept as its last token.
- **Log-probs** are the engine's ``processed_logprobs``: log softmax(z / T) after nucleus filtering (equal to the
  KV-cache sampler's when ``top_p = 1``); with ``greedy`` (top-k = 1) the raw log softmax(z). They only feed the
  rollout/training mismatch metric.
- **Model-agnostic.** A hybrid Mamba model (megatron-core ``HybridModel``, e.g. Nemotron-Nano-12B-v2) gets its
  per-request SSM/conv states from the engine (``MambaInferenceStateConfig.from_model``), which the KV-cache sampler
  cannot hold; prefix caching then also caches Mamba states at block boundaries (``rlp.dynamic_mamba_prefix_cache_gb``).
- **Limits.** Single pipeline stage only (the engine runs its own pipeline schedule, which our stage-to-stage
  preparation does not drive); needs flash-attn (the engine's attention kernels), i.e. a GPU in the NGC image. The
  tests exercise it on CPU with reference paged-attention kernels (:mod:`nemo_smartpt.testing.paged_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemo_smartpt.rlp.megatron.pipeline import pipeline_size
from nemo_smartpt.rlp.megatron.rollout import RolloutCounters, RolloutGroup, RolloutSampler

_STOP_TEXT = "</think>"


def _cut_at_end(tokens: list[int], end_ids: tuple[int, ...]) -> list[int]:
    """The thought up to and including its first end token (the engine may report tokens past its termination)."""
    for i, t in enumerate(tokens):
        if t in end_ids:
            return tokens[: i + 1]
    return tokens


class DynamicEngineError(RuntimeError):
    """The dynamic engine cannot serve this model or request (the message says which setting to change)."""


class _StopIdsTokenizer:
    """The tokenizer surface megatron's engine touches when every prompt arrives as ids.

    The engine tokenizes stop *words* (strings); RLP's stop is a fixed id sequence, so the one stop word maps to it.
    Prompts and outputs are never turned into text (``detokenize`` returns an empty string).
    """

    def __init__(self, stop_ids: tuple[int, ...], vocab_size: int):
        self.stop_ids = stop_ids
        self.vocab_size = vocab_size
        self.eod = -1
        self.bos = None

    def tokenize(self, text: str) -> list[int]:
        if text != _STOP_TEXT:
            raise DynamicEngineError(f"the RLP engine tokenizer only knows the stop word, got {text!r}")
        return list(self.stop_ids)

    def detokenize(self, ids, **kwargs) -> str:
        return ""

    def offsets(self, ids, text) -> list[int]:
        return []


class DynamicEngineSampler(RolloutSampler):
    """G samples per prompt from megatron-core's ``DynamicInferenceEngine`` (paged KV, prefix caching).

    The first six arguments are :class:`~nemo_smartpt.rlp.megatron.rollout.RolloutSampler`'s; the engine's:

    Args:
        block_size_tokens: KV block size; prefix caching shares only complete blocks of a prompt.
        buffer_size_gb: KV buffer the engine reserves on the device.
        max_requests: cap on concurrently active requests (None: the engine sizes it from the buffer).
        max_prompt_tokens: longest prompt (sizes the engine's sequence limit together with ``max_new_tokens``).
        release_kv: suspend the engine (freeing its KV buffer) after every batch.
        mamba_prefix_cache_gb: memory for the Mamba states at shared block boundaries (hybrid models only; without
            it megatron-core disables prefix caching for them).
    """

    def __init__(
        self,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        temperature: float = 0.7,
        top_p: float = 1.0,
        greedy: bool = False,
        counters: RolloutCounters | None = None,
        end_ids: Sequence[int] = (),
        *,
        block_size_tokens: int = 256,
        buffer_size_gb: float = 20.0,
        max_requests: int | None = None,
        max_prompt_tokens: int = 2048,
        release_kv: bool = True,
        mamba_prefix_cache_gb: float = 1.0,
    ):
        super().__init__(max_new_tokens, stop_ids, temperature, top_p, greedy, counters, end_ids)
        self.block_size_tokens = block_size_tokens
        self.buffer_size_gb = buffer_size_gb
        self.max_requests = max_requests
        self.max_prompt_tokens = max_prompt_tokens
        self.release_kv = release_kv
        self.mamba_prefix_cache_gb = mamba_prefix_cache_gb
        self._engine = None
        self._engine_model = None

    # -- engine life cycle -------------------------------------------------------------------------------------------

    def _build_engine(self, gpt):
        from megatron.core.inference.config import (
            InferenceConfig,
            KVCacheManagementMode,
            MambaInferenceStateConfig,
            PrefixCachingEvictionPolicy,
        )
        from megatron.core.inference.contexts import DynamicInferenceContext
        from megatron.core.inference.engines import DynamicInferenceEngine
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.text_generation_controllers.text_generation_controller import (
            TextGenerationController,
        )
        from megatron.core.inference.utils import InferenceMode

        if pipeline_size() > 1:
            raise DynamicEngineError(
                "rlp.generation_engine=dynamic runs on a single pipeline stage; use rlp.generation_engine=kv_cache "
                "under pipeline parallelism"
            )
        # None for a pure transformer; for a hybrid (Mamba) model the per-request SSM/conv state shapes.
        mamba = MambaInferenceStateConfig.from_model(gpt)
        config = InferenceConfig(
            mamba_inference_state_config=mamba,
            # Hybrid models share a prefix only where the Mamba state at a block boundary is cached too.
            prefix_caching_mamba_gb=self.mamba_prefix_cache_gb if mamba is not None else None,
            block_size_tokens=self.block_size_tokens,
            buffer_size_gb=self.buffer_size_gb,
            max_requests=self.max_requests,
            max_sequence_length=self.max_prompt_tokens + self.max_new_tokens,
            enable_prefix_caching=True,
            # A block is shared while some request of the batch holds it and dropped when the last one finishes:
            # cached KV of earlier weights can never outlive the batch that computed it.
            prefix_caching_eviction_policy=PrefixCachingEvictionPolicy.REF_ZERO,
            materialize_only_last_token_logits=True,
            logprobs_mode="raw_logprobs" if self.greedy else "processed_logprobs",
            kv_cache_management_mode=(
                KVCacheManagementMode.RECOMPUTE if self.release_kv else KVCacheManagementMode.PERSIST
            ),
        )
        try:
            context = DynamicInferenceContext(gpt.config, config)
            wrapper = GPTInferenceWrapper(gpt, context)
            vocab = int(gpt.vocab_size)
            controller = TextGenerationController(wrapper, _StopIdsTokenizer(self.stop_ids, vocab))
            engine = DynamicInferenceEngine(controller, context)
        finally:
            # The engine marks inference mode active for the whole process; only generation may run in it.
            InferenceMode.unset_active()
        return engine

    def _engine_for(self, gpt):
        if self._engine is None or self._engine_model is not gpt:
            self._engine = self._build_engine(gpt)
            self._engine_model = gpt
        elif self.release_kv:
            self._engine.resume()
        return self._engine

    # -- generation --------------------------------------------------------------------------------------------------

    def _sampling_params(self):
        from megatron.core.inference.sampling_params import SamplingParams

        return SamplingParams(
            temperature=1.0 if self.greedy else float(self.temperature),
            top_k=1 if self.greedy else 0,
            top_p=0.0 if (self.greedy or self.top_p >= 1.0) else float(self.top_p),  # the engine's "off" is 0
            num_tokens_to_generate=self.max_new_tokens,
            return_log_probs=True,
            skip_prompt_log_probs=True,
            # The end of document ends a thought (as in the KV-cache sampler); the engine knows one such id.
            termination_id=self.end_ids[0] if self.end_ids else -1,
            stop_words=[_STOP_TEXT],
            detokenize_stop_sequence=True,  # keep </think> in the returned thought
        )

    def generate_batch(
        self, gpt, prompts: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None = None
    ) -> list[RolloutGroup]:
        """All groups of ``prompts`` in one engine run (``gpt`` is the model inside ``generation_mode``)."""
        from megatron.core.inference.utils import InferenceMode

        longest = max((len(p) for p in prompts), default=0)
        if longest > self.max_prompt_tokens:
            raise DynamicEngineError(
                f"a rollout prompt has {longest} tokens but the engine was sized for max_prompt_tokens="
                f"{self.max_prompt_tokens}"
            )
        engine = self._engine_for(gpt)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
        params = self._sampling_params()
        with InferenceMode.active():
            engine.reset()  # weights changed since the last batch: no prefix block may be reused
            engine.controller.sampling_rng.manual_seed(seed)
            request_ids = []
            for prompt in prompts:
                for _ in range(num_samples):
                    rid = len(request_ids)
                    engine.add_request(rid, [int(t) for t in prompt], params)
                    request_ids.append(rid)
            records = {}
            steps = 0
            while engine.has_unfinished_requests():
                result = engine.step_modern()
                steps += 1
                for record in result["finished_request_records"]:
                    merged = record.merge()
                    records[int(merged.request_id)] = merged
            computed = int(getattr(engine, "_prefill_tokens_computed", 0))
            skipped = int(getattr(engine, "_prefill_tokens_skipped", 0))
            if self.release_kv:
                engine.suspend()
        if len(records) != len(request_ids):
            raise DynamicEngineError(f"the engine finished {len(records)} of {len(request_ids)} rollout requests")
        return self._groups(prompts, num_samples, records, computed, skipped, steps)

    def _groups(self, prompts, num_samples, records, computed, skipped, steps) -> list[RolloutGroup]:
        from megatron.core.inference.inference_request import Status

        groups = []
        for g, prompt in enumerate(prompts):
            thoughts, logps = [], []
            for i in range(num_samples):
                req = records[g * num_samples + i]
                if req.status == Status.FAILED:
                    raise DynamicEngineError(
                        f"rollout request of group {g} failed in the engine ({len(prompt)} prompt tokens); "
                        "raise rlp.dynamic_buffer_size_gb or lower rlp.max_context / rlp.max_thought_tokens"
                    )
                tokens = _cut_at_end([int(t) for t in req.generated_tokens][: self.max_new_tokens], self.end_ids)
                lps = [float(x) for x in (req.generated_log_probs or [])][: len(tokens)]
                thoughts.append(tokens)
                logps.append(lps)
            groups.append(RolloutGroup(thoughts=thoughts, logprobs=logps))
        c = self.counters
        generated = sum(len(t) for grp in groups for t in grp.thoughts)
        c.groups += len(groups)
        c.generated_tokens += generated
        c.prefill_tokens += computed
        c.prefix_cached_tokens += skipped
        c.engine_steps += steps
        # Prompt tokens actually encoded, plus one decode position per generated token after the first.
        c.forward_tokens += computed + max(generated - len(groups) * num_samples, 0)
        c.prefills += len(groups) * num_samples
        return groups
