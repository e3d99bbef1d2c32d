"""Thought rollouts from the live training model with a shared-prefix KV cache (arXiv 2510.01265, step 1).

For one target position the G thoughts share the prompt ``P x_<t <think>``. :class:`KVCacheSampler` encodes it ONCE
(a batch-1 prefill through megatron-core's ``StaticInferenceContext``), copies the cached keys/values of slot 0 into
slots 1..G−1, then decodes the G thoughts together, one token per forward. Cost per group: one prefill of P tokens +
(R − 1) decode forwards of G tokens, instead of G·(P + R) tokens re-encoded (:class:`NoCacheSampler`, the reference).

- The model is the training module itself (no weight copy). :func:`generation_mode` switches it to eval mode under
  ``torch.no_grad()`` and, for a Megatron DDP with overlapped parameter all-gather, disables the forward pre-hooks with
  a forced parameter sync first (as megatron's own RL code does), restoring everything afterwards.
- Tensor parallelism: the decode forward gathers the logits (``runtime_gather_output=True``; fine for sampling, the
  training loss never gathers). Every TP rank then holds identical logits and draws from a generator with the same
  seed, so all TP ranks sample the same tokens without a broadcast.
- Pipeline parallelism: each prefill/decode forward runs stage to stage (:func:`~nemo_smartpt.rlp.megatron.pipeline.
  stage_forward`: p2p of the ``[S, rows, H]`` hidden states on megatron's pipeline group), every stage keeps the KV
  cache of its own layers in its own inference context, the last stage samples, and the sampled ids and log-probs
  are broadcast to every pipeline rank, so all stages feed the same next tokens and stop together. The prefill is
  still one batch-1 forward per group. Under PP this is collective: every pipeline rank must call with the same
  prompts (see :class:`~nemo_smartpt.rlp.megatron.pipeline.PipelineFeed`).
- Determinism: draws come only from the ``torch.Generator`` passed in (seeded per (seed, step, data-parallel rank,
  micro-batch)). Thoughts stop at ``</think>`` (possibly several tokens) or at ``max_new_tokens``; tokens after a
  row's stop are never returned, with each token's sampling log-prob (softmax(z / T), before any top-p cut).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch

from nemo_smartpt.rlp.megatron.logits import supports_output_processor
from nemo_smartpt.rlp.megatron.logprobs import causal_mask
from nemo_smartpt.rlp.megatron.pipeline import (
    broadcast_from_last_stage,
    model_device,
    pipeline_size,
    stage_forward,
    stage_model,
)


@dataclasses.dataclass
class RolloutCounters:
    """Work done by a sampler; the step reads and resets it per optimizer step."""

    groups: int = 0
    """Groups (target positions) generated."""
    prefills: int = 0
    """Prefill forwards of a rollout prompt (KV-cache sampler: exactly one per group)."""
    prefill_tokens: int = 0
    decode_forwards: int = 0
    """Forwards of one new token per row over the cache."""
    full_forwards: int = 0
    """Forwards that re-encode whole sequences (the no-cache sampler)."""
    forward_tokens: int = 0
    """Token positions pushed through the model, all forwards together."""
    generated_tokens: int = 0
    """Tokens returned in thoughts (after stopping)."""
    prefix_cached_tokens: int = 0
    """Prompt tokens served from the dynamic engine's prefix cache instead of being encoded again."""
    engine_steps: int = 0
    """Forward steps of the dynamic engine (each one batches every active request)."""

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)


@dataclasses.dataclass
class RolloutGroup:
    """The G thoughts of one prompt."""

    thoughts: list[list[int]]
    """Generated ids per sample, ending at the first ``</think>`` (kept) or at the length limit."""
    logprobs: list[list[float]]
    """log softmax(z / T) of each returned token under the rollout forward."""


_SEQUENCE_PARALLEL_ATTRS = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")


@contextlib.contextmanager
def sequence_parallel_off(gpt) -> Iterator[None]:
    """Turn sequence parallelism off in ``gpt`` (config and every module flag) while inside; restore each exactly.

    Generation feeds one token per row per forward, which cannot be split along the sequence over TP ranks (megatron's
    static inference refuses sequence parallelism for dense models too); without it the TP layers all-reduce instead
    of reduce-scatter, on identical weights. Flags are saved per module, not reset to one value."""
    config = gpt.config
    if not getattr(config, "sequence_parallel", False):
        yield
        return
    saved = [
        (module, attr, getattr(module, attr))
        for module in gpt.modules()
        for attr in _SEQUENCE_PARALLEL_ATTRS
        if isinstance(getattr(module, attr, None), bool)
    ]
    config.sequence_parallel = False
    for module, attr, _ in saved:
        setattr(module, attr, False)
    try:
        yield
    finally:
        config.sequence_parallel = True
        for module, attr, value in saved:
            setattr(module, attr, value)


_DROPOUT_ATTRS = ("hidden_dropout", "attention_dropout", "dropout_p", "attention_dropout_p")


@contextlib.contextmanager
def dropout_off(model) -> Iterator[None]:
    """Every dropout of ``model`` (all chunks) at p = 0 while inside; each value restored exactly on exit.

    RLP's training forward runs in train mode while the thoughts were sampled in eval mode: with dropout the trained
    policy would not be the sampling policy (the ratio of eq. 8 would not be 1 at one update per batch) and S_pred
    would carry dropout noise. Covers ``torch.nn.Dropout`` modules (embedding, local attention) and the float rates
    megatron-core and Transformer Engine layers read at forward time (``hidden_dropout`` of the bias-dropout-add,
    ``attention_dropout``), plus the model config's own fields.
    """
    chunks = model if isinstance(model, (list, tuple)) else [model]
    saved: list[tuple[object, str, float]] = []
    seen: set[int] = set()
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, torch.nn.Dropout):
                saved.append((module, "p", module.p))
            for attr in _DROPOUT_ATTRS:
                value = getattr(module, attr, None)
                if isinstance(value, float) and not isinstance(value, bool):
                    saved.append((module, attr, value))
            config = getattr(module, "config", None)
            if config is not None and id(config) not in seen:
                seen.add(id(config))
                for attr in ("hidden_dropout", "attention_dropout"):
                    value = getattr(config, attr, None)
                    if isinstance(value, float):
                        saved.append((config, attr, value))
    for obj, attr, _ in saved:
        setattr(obj, attr, 0.0)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


@contextlib.contextmanager
def generation_mode(model) -> Iterator[torch.nn.Module]:
    """Eval mode + no grad on the live model; DDP forward pre-hooks off (params force-synced) and sequence
    parallelism off (:func:`sequence_parallel_off`) while inside.

    Yields the unwrapped ``GPTModel`` (the whole model under PP = 1, this rank's stage under PP > 1).
    """
    chunks = model if isinstance(model, (list, tuple)) else [model]
    gpt = stage_model(model)
    ddp_with_hooks = [m for m in chunks if getattr(m, "use_forward_hook", False)]
    for m in ddp_with_hooks:
        # Parameters may still be mid all-gather (overlap_param_gather); the sync makes them whole before we read.
        m.disable_forward_pre_hook(param_sync=True)
    was_training = gpt.training
    gpt.eval()
    try:
        with torch.no_grad(), sequence_parallel_off(gpt):
            yield gpt
    finally:
        gpt.train(was_training)
        for m in ddp_with_hooks:
            m.enable_forward_pre_hook()


def sample_tokens(
    logits_NV: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(z / T) (optionally nucleus-truncated); greedy takes the argmax.

    Returns:
        ``(tokens_N, logprob_N)``: the ids and their log-probs under softmax(z / T) (untruncated).
    """
    logp_NV = torch.log_softmax(logits_NV.float() / temperature, dim=-1)
    if greedy:
        tokens_N = logp_NV.argmax(dim=-1)
    else:
        probs_NV = logp_NV.exp()
        if top_p < 1.0:
            sorted_p, order = probs_NV.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs_NV = torch.zeros_like(probs_NV).scatter(-1, order, sorted_p)
        tokens_N = torch.multinomial(probs_NV, 1, generator=generator)[:, 0]
    return tokens_N, logp_NV.gather(-1, tokens_N[:, None])[:, 0]


def last_position_logits(hidden_states, output_layer, output_weight=None, runtime_gather_output=None, **kwargs):
    """``GPTModel`` output processor of the prefill: gathered logits ``[N, 1, V]`` of the last position only
    (a prompt of 2,048 tokens would otherwise materialise ``[2048, V]``; sequence parallelism is off here)."""
    logits, _ = output_layer(hidden_states[-1:], weight=output_weight, runtime_gather_output=runtime_gather_output)
    return logits.transpose(0, 1).contiguous()


def _ends_with(row: list[int], stop: tuple[int, ...]) -> bool:
    return len(row) >= len(stop) and tuple(row[-len(stop) :]) == stop


class _Rows:
    """Per-row outputs and stop bookkeeping shared by both samplers."""

    def __init__(self, num_rows: int, stop_ids: tuple[int, ...], end_ids: tuple[int, ...] = ()):
        self.stop_ids = stop_ids
        self.end_ids = frozenset(end_ids)
        self.tokens: list[list[int]] = [[] for _ in range(num_rows)]
        self.logps: list[list[float]] = [[] for _ in range(num_rows)]
        self.done = [False] * num_rows

    def append(self, tokens_N: torch.Tensor, logp_N: torch.Tensor) -> None:
        for i, (tok, lp) in enumerate(zip(tokens_N.tolist(), logp_N.tolist())):
            if self.done[i]:
                continue
            self.tokens[i].append(tok)
            self.logps[i].append(lp)
            self.done[i] = tok in self.end_ids or _ends_with(self.tokens[i], self.stop_ids)

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def result(self, counters: RolloutCounters) -> RolloutGroup:
        counters.groups += 1
        counters.generated_tokens += sum(len(t) for t in self.tokens)
        return RolloutGroup(thoughts=self.tokens, logprobs=self.logps)


class RolloutSampler:
    """What every thought sampler shares: the sampling rule, the stop, the counters, and per-group entry points.

    Subclasses implement :meth:`generate_batch` (all groups of a micro-batch on the unwrapped model).

    Args:
        max_new_tokens: thought length limit L (``</think>`` included).
        stop_ids: the ``</think>`` token ids.
        temperature: sampling temperature (0.7 in the paper).
        top_p: nucleus threshold (1.0: off).
        greedy: argmax decoding (tests).
        counters: where the work is counted (a fresh one if None).
        end_ids: single tokens that also end a thought (the end-of-document id): a document that ends inside a
            thought ends the thought (kept as its last token).
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
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not stop_ids:
            raise ValueError("stop_ids must be non-empty")
        self.max_new_tokens = max_new_tokens
        self.stop_ids = tuple(int(t) for t in stop_ids)
        self.temperature = temperature
        self.top_p = top_p
        self.greedy = greedy
        self.counters = counters if counters is not None else RolloutCounters()
        self.end_ids = tuple(int(t) for t in end_ids)

    def generate_batch(
        self, gpt, prompts: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None = None
    ) -> list[RolloutGroup]:
        """One group of ``num_samples`` thoughts per prompt (``gpt`` is the model inside :func:`generation_mode`)."""
        raise NotImplementedError

    def generate(
        self, gpt, prompt_ids: Sequence[int], num_samples: int, generator: torch.Generator | None = None
    ) -> RolloutGroup:
        """The group of one prompt."""
        return self.generate_batch(gpt, [prompt_ids], num_samples, generator)[0]

    def generate_groups(
        self, model, prompts: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None = None
    ) -> list[RolloutGroup]:
        """One group per prompt, from the live (possibly wrapped) training model."""
        with generation_mode(model) as gpt:
            return self.generate_batch(gpt, prompts, num_samples, generator)


class KVCacheSampler(RolloutSampler):
    """G samples per prompt from one prefill and a shared KV cache (megatron-core ``StaticInferenceContext``).

    Constructor arguments: see :class:`RolloutSampler`.
    """

    def _sample(self, logits_NV, generator):
        return sample_tokens(logits_NV, self.temperature, self.top_p, self.greedy, generator)

    def _sample_shared(self, logits_NV, num_rows: int, device, generator):
        """Sample on the last pipeline stage (``logits_NV`` is None elsewhere) and give every stage the result."""
        if pipeline_size() == 1:
            return self._sample(logits_NV, generator)
        if logits_NV is not None:
            tokens_N, logp_N = self._sample(logits_NV, generator)
            tokens_N, logp_N = tokens_N.long().contiguous(), logp_N.float().contiguous()
        else:
            tokens_N = torch.empty(num_rows, dtype=torch.long, device=device)
            logp_N = torch.empty(num_rows, dtype=torch.float32, device=device)
        return broadcast_from_last_stage(tokens_N), broadcast_from_last_stage(logp_N)

    def generate(
        self, gpt, prompt_ids: Sequence[int], num_samples: int, generator: torch.Generator | None = None
    ) -> RolloutGroup:
        """Sample ``num_samples`` continuations of ``prompt_ids``; ``gpt`` is the model inside :func:`generation_mode`."""
        from megatron.core.inference.contexts import StaticInferenceContext

        G, P = num_samples, len(prompt_ids)
        device = model_device(gpt)
        ctx = StaticInferenceContext(max_batch_size=G, max_sequence_length=P + self.max_new_tokens)
        ids_1P = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=device)
        pos_1P = torch.arange(P, device=device)[None]
        # Under PP each stage caches its own layers in its own ctx; only the last stage gets logits (None elsewhere).
        logits = stage_forward(
            gpt,
            ids_1P,
            pos_1P,
            causal_mask(P, device),
            inference_context=ctx,
            runtime_gather_output=True,
            # [1, 1, V]: the prefill needs only the last position's logits (models with megatron-core's hook).
            **({"output_processor": last_position_logits} if supports_output_processor(gpt) else {}),
        )
        self.counters.prefills += 1
        self.counters.prefill_tokens += P
        self.counters.forward_tokens += P
        # Share the prefix: every layer cached [max_seq, G, groups, dim] but only slot 0 was written by the prefill.
        for key_mem, value_mem in ctx.key_value_memory_dict.values():
            key_mem[:P, 1:G] = key_mem[:P, :1]
            value_mem[:P, 1:G] = value_mem[:P, :1]
        ctx.increment_sequence_len_offset(P)
        ctx.enable_decode_mode()

        rows = _Rows(G, self.stop_ids, self.end_ids)
        first = None if logits is None else logits[:, -1].expand(G, -1)
        rows.append(*self._sample_shared(first, G, device, generator))
        for k in range(1, self.max_new_tokens):
            if rows.all_done:
                break
            last_G1 = torch.as_tensor([[t[-1]] for t in rows.tokens], dtype=torch.long, device=device)
            pos_G1 = torch.full((G, 1), P + k - 1, dtype=torch.long, device=device)
            logits = stage_forward(gpt, last_G1, pos_G1, None, inference_context=ctx, runtime_gather_output=True)
            ctx.increment_sequence_len_offset(1)
            self.counters.decode_forwards += 1
            self.counters.forward_tokens += G
            rows.append(*self._sample_shared(None if logits is None else logits[:, -1], G, device, generator))
        return rows.result(self.counters)

    def generate_batch(
        self, gpt, prompts: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None = None
    ) -> list[RolloutGroup]:
        """One group per prompt, group after group (``gpt`` is the model inside :func:`generation_mode`)."""
        return [self.generate(gpt, p, num_samples, generator) for p in prompts]


class NoCacheSampler(KVCacheSampler):
    """The naive reference: every step re-encodes all G full sequences (prompt + thought so far), no cache.

    Same sampling rule and RNG use as :class:`KVCacheSampler`, so greedy decoding must agree token for token.
    """

    def generate(self, gpt, prompt_ids, num_samples, generator=None) -> RolloutGroup:
        if pipeline_size() > 1:
            raise NotImplementedError("NoCacheSampler is the single-stage reference; use KVCacheSampler under PP")
        G, P = num_samples, len(prompt_ids)
        device = gpt.embedding.word_embeddings.weight.device
        rows = _Rows(G, self.stop_ids, self.end_ids)
        for k in range(self.max_new_tokens):
            if rows.all_done:
                break
            # Finished rows are padded with their stop token: their outputs are ignored, the batch stays rectangular.
            fill = self.stop_ids[-1]
            seq_GS = torch.as_tensor(
                [list(prompt_ids) + t + [fill] * (k - len(t)) for t in rows.tokens], dtype=torch.long, device=device
            )
            S = P + k
            logits = gpt(seq_GS, torch.arange(S, device=device).expand(G, S), causal_mask(S, device))
            self.counters.full_forwards += 1
            self.counters.forward_tokens += G * S
            rows.append(*self._sample(logits[:, -1], generator))
        return rows.result(self.counters)
