"""Preparation of an RLP micro-batch: positions → rollouts → scoring sequences → baseline (arXiv 2510.01265).

This is the part of a step that needs generation. Under PP = 1 it runs on the whole model (any TP); under PP > 1 it is
collective over the pipeline group (stage-to-stage generation and baseline, :mod:`nemo_smartpt.rlp.megatron.pipeline`) and
every stage ends with the same prepared batch, so it must run outside Megatron's schedule. It turns packed pretraining tokens into a *prepared batch*: a dict of tensors that the training forward step
(:mod:`nemo_smartpt.rlp.megatron.step`) consumes without further model calls, which is why that forward step runs under any
TP/PP schedule::

    tokens [b, S] ──sample_target_positions──▶ B positions (x_<t, x_t)
        ──KVCacheSampler (prefill once per group, G samples)──▶ B·G thoughts
        ──build_scoring_group / stack_groups──▶ rows ``P x_<t <think> c_i </think> x_t`` (a group's G rows adjacent)
        ──score_next_tokens with φ swapped in (one row per position)──▶ S_ema [B]

Prepared keys (N = B·G scoring rows, then M optional next-token rows; L = padded length):
``input_ids_NL``, ``labels_NL``, ``position_ids_NL``, ``thought_mask_NL`` (policy-generated thought tokens),
``predict_index_N`` (where the label is x_t), ``valid_N``, ``truncated_N``, ``thought_len_N``, ``s_ema_B`` (zeros when
not computed this step), ``has_s_ema``, ``num_groups``, ``ntp_loss_mask_NL`` (the mixed objective's rows; all zero
when ``ntp_loss_weight = 0``), ``rollout_logp_NL`` (the sampler's log-probs on thought tokens, for a mismatch metric).

logp_old. With one optimizer update per batch (the paper's setting), π_θold = π_θ at the training forward, so the loss
uses ``logp.detach()`` of that same forward as logp_old (ratio exactly 1, clipping inert, no extra forward). The
sampler's own log-probs travel in ``rollout_logp_NL`` and are only reported (``rlp rollout logp abs diff``): they differ
from the training forward by numerics (KV cache vs full forward, bf16 kernels), which is worth watching, not training on.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.ema import ParamEMA
from nemo_smartpt.rlp.megatron.logprobs import RLPPipelineError, score_next_tokens
from nemo_smartpt.rlp.megatron.pipeline import model_device, pipeline_size
from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, RolloutCounters, generation_mode
from nemo_smartpt.rlp.positions import gather_context, sample_target_positions
from nemo_smartpt.rlp.prompt import (
    ThoughtLayout,
    build_baseline_sequence,
    build_scoring_group,
    flat_scoring_batch,
    rollout_prompt_ids,
    stack_groups,
)


def resolve_generation_engine(requested: str) -> str:
    """``rlp.generation_engine`` after ``auto``: the dynamic engine where its kernels exist and PP = 1.

    Raises:
        RLPPipelineError: ``dynamic`` was asked for under pipeline parallelism.
    """
    if requested == "dynamic" and pipeline_size() > 1:
        raise RLPPipelineError(
            "rlp.generation_engine=dynamic runs megatron-core's engine on one pipeline stage; under pipeline "
            "parallelism use rlp.generation_engine=kv_cache (or auto)"
        )
    if requested != "auto":
        return requested
    if not torch.cuda.is_available() or pipeline_size() > 1:
        return "kv_cache"
    try:
        import flash_attn  # noqa: F401  (the dynamic engine's attention kernels)
    except ImportError:
        return "kv_cache"
    return "dynamic"


def build_sampler(cfg: RLPConfig, layout: ThoughtLayout, counters: RolloutCounters):
    """The rollout sampler ``rlp.generation_engine`` asks for, counting into ``counters``; ``</think>`` and the
    layout's end ids (EOD) end a thought."""
    common = dict(
        max_new_tokens=cfg.max_thought_tokens,
        stop_ids=layout.think_close_ids,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        counters=counters,
        end_ids=layout.end_ids,
    )
    if resolve_generation_engine(cfg.generation_engine) == "kv_cache":
        return KVCacheSampler(**common)
    from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineSampler

    return DynamicEngineSampler(
        **common,
        block_size_tokens=cfg.dynamic_block_size_tokens,
        buffer_size_gb=cfg.dynamic_buffer_size_gb,
        max_requests=cfg.dynamic_max_requests,
        max_prompt_tokens=len(layout.prompt_ids) + cfg.max_context + len(layout.think_open_ids),
        release_kv=cfg.dynamic_release_kv,
        mamba_prefix_cache_gb=cfg.dynamic_mamba_prefix_cache_gb,
    )


def sequence_parallel_multiple(model) -> int:
    """The tensor-parallel size when the model runs with sequence parallelism (rows must divide by it), else 1."""
    from nemo_smartpt.rlp.megatron.pipeline import stage_model

    config = getattr(stage_model(model), "config", None)
    if not getattr(config, "sequence_parallel", False):
        return 1
    return int(getattr(config, "tensor_model_parallel_size", 1) or 1)


class RLPSequenceLengthError(ValueError):
    """A scoring sequence would exceed the model's learned position table."""


@dataclasses.dataclass
class PrepStats:
    """What preparation did in one optimizer step (summed over its micro-batches); metrics read it."""

    documents: int = 0
    input_tokens: int = 0
    """Packed-sample tokens consumed (the paper's T_inp)."""
    skipped_documents: int = 0
    positions: int = 0
    rollout_prompt_tokens: int = 0
    generated_tokens: int = 0
    scoring_tokens: int = 0
    """Real (unpadded) tokens of the scoring rows: what the training forward+backward processes."""
    baseline_tokens: int = 0
    ntp_tokens: int = 0
    generation_s: float = 0.0
    baseline_s: float = 0.0
    baseline_forwards: int = 0
    carried_positions: int = 0
    """Positions beyond ``rlp.max_positions_per_microbatch`` moved to a later micro-batch of the step."""
    dropped_positions: int = 0
    """Positions still beyond the cap at the step's last micro-batch (not trained)."""


def step_generator(seed: int, step: int, sample_slot: int, device=None) -> torch.Generator:
    """The RNG of one micro-batch: a function of (seed, step, the micro-batch's slot in the global batch) only.

    ``sample_slot = microbatch · dp_size + dp_rank`` is where Bridge's sampler takes the micro-batch's samples from
    in the global batch, so DP=2 draws the same positions and thoughts for a sample as DP=1 does on the combined
    batch, TP ranks of one DP replica draw the same, and a rerun reproduces them.
    """
    mixed = (seed * 1_000_003 + step * 65_537 + sample_slot * 131) % (2**62)
    device = torch.device(device or "cpu")
    return torch.Generator(device=device).manual_seed(mixed)


class RLPPreparer:
    """Builds prepared batches from packed tokens with the live model.

    Args:
        cfg: the validated RLP config.
        layout: token ids of the prompt, ``<think>``, ``</think>``, padding, truncation policy.
        eod_id: end-of-document id separating packed documents.
        ema: the baseline weights φ (``baseline=ema``); ignored otherwise.
        counters: rollout counters (shared with metrics).
    """

    def __init__(
        self,
        cfg: RLPConfig,
        layout: ThoughtLayout,
        eod_id: int,
        ema: ParamEMA | None = None,
        counters: RolloutCounters | None = None,
    ):
        self.cfg = cfg
        self.layout = layout
        self.eod_id = eod_id
        self.ema = ema
        self.counters = counters if counters is not None else RolloutCounters()
        self.sampler = None  # built at the first preparation, when the pipeline size is known (rlp.generation_engine)
        self.stats = PrepStats()
        self._carry: list = []  # (context, target) pairs carried to the step's next micro-batch

    def _bound_positions(self, contexts: list, last_microbatch: bool) -> list:
        """At most ``rlp.max_positions_per_microbatch`` positions: carried ones first, the rest carried or dropped."""
        cap = self.cfg.max_positions_per_microbatch
        contexts = self._carry + contexts
        self._carry = []
        if cap is None or len(contexts) <= cap:
            return contexts
        kept, rest = contexts[:cap], contexts[cap:]
        if last_microbatch:
            self.stats.dropped_positions += len(rest)
        else:
            self._carry = rest
            self.stats.carried_positions += len(rest)
        return kept

    def _check_length(self, gpt) -> None:
        if getattr(gpt, "position_embedding_type", None) != "learned_absolute":
            return
        longest = (
            len(self.layout.prompt_ids)
            + self.cfg.max_context
            + len(self.layout.think_open_ids)
            + self.cfg.max_thought_tokens
            + len(self.layout.think_close_ids)
        )
        if longest > gpt.max_sequence_length:
            raise RLPSequenceLengthError(
                f"a scoring row can hold {longest} tokens (prompt {len(self.layout.prompt_ids)} + max_context "
                f"{self.cfg.max_context} + thought {self.cfg.max_thought_tokens} + tags) but the model's learned "
                f"position table has {gpt.max_sequence_length}; lower rlp.max_context / rlp.max_thought_tokens or "
                "use rotary positions"
            )

    def prepare(
        self,
        tokens_bS: torch.Tensor,
        model,
        step: int,
        microbatch: int = 0,
        dp_rank: int = 0,
        dp_size: int = 1,
        ntp_labels_bS: torch.Tensor | None = None,
        ntp_loss_mask_bS: torch.Tensor | None = None,
        last_microbatch: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Prepare one micro-batch of packed samples ``tokens_bS`` (``[b, S]``) at optimizer step ``step``.

        ``ntp_labels_bS`` / ``ntp_loss_mask_bS`` add the documents as next-token rows when ``ntp_loss_weight > 0``.
        ``last_microbatch``: whether this is the step's last micro-batch (positions beyond
        ``rlp.max_positions_per_microbatch`` are carried to the next call until then, dropped after it).
        """
        cfg, layout = self.cfg, self.layout
        tokens_bS = tokens_bS.detach().cpu()
        slot = microbatch * dp_size + dp_rank  # the samples' place in the global batch (Bridge's sampler order)
        gen = step_generator(cfg.seed, step, slot)
        sample = sample_target_positions(
            tokens_bS, self.eod_id, cfg.positions_per_document, cfg.min_context, cfg.max_context, gen
        )
        self.stats.documents += sample.num_documents
        self.stats.input_tokens += tokens_bS.numel()
        self.stats.skipped_documents += sample.num_skipped
        contexts = [gather_context(tokens_bS, p) for p in sample.positions]
        contexts = self._bound_positions(contexts, last_microbatch)
        if not contexts:
            raise RLPNoPositionsError(
                f"no document of this micro-batch ({sample.num_documents} documents) has more than "
                f"rlp.min_context={cfg.min_context} tokens; lower min_context or use longer sequences"
            )
        prompts = [rollout_prompt_ids(layout, ctx) for ctx, _ in contexts]
        multiple = sequence_parallel_multiple(model)  # read before generation_mode switches SP off

        t0 = time.perf_counter()
        baseline_B = None
        with generation_mode(model) as gpt:
            self._check_length(gpt)
            device = model_device(gpt)  # non-first pipeline stages have no embedding
            # Positions were drawn on the CPU generator; sampling draws on the logits' device (multinomial needs a
            # generator there), seeded from the same (seed, step, rank, micro-batch) key.
            sample_gen = step_generator(cfg.seed + 1, step, slot, device)
            if self.sampler is None:
                self.sampler = build_sampler(cfg, layout, self.counters)
            groups = self.sampler.generate_batch(gpt, prompts, cfg.num_rollouts, sample_gen)
            t1 = time.perf_counter()
            if cfg.computes_baseline_at(step):
                baseline_B = self._baseline(gpt, contexts, device)
        self.stats.generation_s += t1 - t0
        self.stats.baseline_s += time.perf_counter() - t1

        scoring = [
            build_scoring_group(layout, ctx, g.thoughts, target, cfg.max_thought_tokens)
            for (ctx, target), g in zip(contexts, groups)
        ]
        stacked = stack_groups(scoring, pad_id=layout.pad_id)
        B, G, L = stacked["input_ids_BGL"].shape
        rollout_logp_BGL = torch.zeros(B, G, L)
        for b, (sg, g) in enumerate(zip(scoring, groups)):
            start = sg.prefix_len - 1  # the label of input position prefix_len − 1 is the first thought token
            for i, lps in enumerate(g.logprobs):
                n = int(sg.thought_len_G[i])
                rollout_logp_BGL[b, i, start : start + n] = torch.tensor(lps[:n])

        batch = flat_scoring_batch(stacked, rollout_logp_BGL, baseline_B)
        if cfg.ntp_loss_weight > 0:
            if ntp_labels_bS is None:
                raise ValueError("ntp_loss_weight > 0 needs the documents' labels (ntp_labels_bS)")
            batch = append_ntp_rows(batch, tokens_bS, ntp_labels_bS.cpu(), ntp_loss_mask_bS, layout.pad_id)
            self.stats.ntp_tokens += int(batch["ntp_loss_mask_NL"].sum())
        L_all = batch["input_ids_NL"].shape[1]
        if L_all % multiple:
            # Sequence parallelism scatters the embedding output along the sequence over TP ranks: the length must
            # divide by TP (megatron asserts otherwise); padding is masked out of every loss term.
            batch = pad_prepared_length(batch, -(-L_all // multiple) * multiple, layout.pad_id)
        batch["position_ids_NL"] = torch.arange(batch["input_ids_NL"].shape[1]).expand_as(batch["input_ids_NL"])
        if cfg.shared_prefix_forward:  # the grouped layout of the same rows (nemo_smartpt.rlp.shared_prefix)
            batch.update(_grouped_layout(batch, scoring, stacked, tokens_bS, gpt.config, layout.pad_id))

        self.stats.positions += B
        self.stats.rollout_prompt_tokens += sum(len(p) for p in prompts)
        self.stats.generated_tokens += int(stacked["thought_len_BG"].sum())
        self.stats.scoring_tokens += int(stacked["attention_mask_BGL"].sum())
        return {k: v.to(device) for k, v in batch.items()}

    def _baseline(self, gpt, contexts, device) -> torch.Tensor:
        """S_ema = log p_φ(x_t | [P] x_<t) for every position: one row per position (not per rollout)."""
        seqs = [build_baseline_sequence(self.layout, ctx, target) for ctx, target in contexts]
        ids = [s.input_ids for s in seqs]
        idx = [s.predict_index for s in seqs]
        tgt = [s.labels[s.predict_index] for s in seqs]
        self.stats.baseline_tokens += sum(len(r) for r in ids)
        self.stats.baseline_forwards += 1
        chunk = self.cfg.logits_chunk_tokens
        if self.cfg.baseline == "ema":
            if self.ema is None:
                raise ValueError("rlp.baseline=ema needs a ParamEMA")
            with self.ema.swapped_in(list(gpt.parameters())):
                return score_next_tokens(gpt, ids, idx, tgt, self.layout.pad_id, device, chunk=chunk)
        return score_next_tokens(gpt, ids, idx, tgt, self.layout.pad_id, device, chunk=chunk)


def _grouped_layout(batch, scoring, stacked, tokens_bS, model_config, pad_id) -> dict[str, torch.Tensor]:
    """The ``sp_*`` keys of ``rlp.shared_prefix_forward``; under sequence parallelism the packed length is a multiple
    of the TP size (the embedding scatters the sequence over TP ranks)."""
    from nemo_smartpt.rlp.shared_prefix import shared_prefix_batch

    row_len_N = stacked["attention_mask_BGL"].sum(-1).reshape(-1)
    extra = batch["input_ids_NL"].shape[0] - row_len_N.numel()  # next-token rows: whole packed samples
    row_len_N = torch.cat([row_len_N, torch.full((extra,), tokens_bS.shape[1], dtype=row_len_N.dtype)])
    sp = getattr(model_config, "sequence_parallel", False)
    return shared_prefix_batch(
        batch["input_ids_NL"],
        num_rollouts=stacked["input_ids_BGL"].shape[1],
        prefix_len_B=torch.tensor([sg.prefix_len for sg in scoring]),
        row_len_N=row_len_N,
        pad_id=pad_id,
        length_multiple=model_config.tensor_model_parallel_size if sp else 1,
    )


class RLPNoPositionsError(RuntimeError):
    """A micro-batch holds no document long enough to draw a target position."""


def append_ntp_rows(
    batch: dict[str, torch.Tensor],
    tokens_bS: torch.Tensor,
    labels_bS: torch.Tensor,
    loss_mask_bS: torch.Tensor | None,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Add the packed documents as extra rows for the mixed objective λ·NTP (same forward, after the B·G rows)."""
    N, L = batch["input_ids_NL"].shape
    b, S = tokens_bS.shape
    L2 = max(L, S)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, L2 - t.shape[1]), value=value)

    mask_bS = torch.ones(b, S) if loss_mask_bS is None else loss_mask_bS.float().cpu()
    out = dict(batch)
    for key, extra, value in (
        ("input_ids_NL", tokens_bS, pad_id),
        ("labels_NL", labels_bS, pad_id),
        ("thought_mask_NL", torch.zeros(b, S, dtype=torch.bool), False),
        ("rollout_logp_NL", torch.zeros(b, S), 0.0),
        ("ntp_loss_mask_NL", mask_bS, 0.0),
    ):
        out[key] = torch.cat([pad(batch[key], value), pad(extra.to(batch[key].dtype), value)])
    return out


def pad_prepared_length(batch: dict[str, torch.Tensor], length: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad every ``*_NL`` tensor of a prepared batch to ``length`` (PP needs one fixed micro-batch shape)."""
    L = batch["input_ids_NL"].shape[1]
    if length < L:
        raise ValueError(f"cannot pad a prepared batch of length {L} down to {length}")
    out = dict(batch)
    for key, value in batch.items():
        if key.endswith("_NL"):
            fill = pad_id if key in ("input_ids_NL", "labels_NL") else 0
            out[key] = torch.nn.functional.pad(value, (0, length - L), value=fill)
    out["position_ids_NL"] = torch.arange(length, device=batch["input_ids_NL"].device).expand_as(out["input_ids_NL"])
    return out
