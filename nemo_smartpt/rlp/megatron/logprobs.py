"""Per-token log-probabilities from a megatron-core ``GPTModel`` without gathering the vocabulary.

Under tensor parallelism the output layer leaves the logits vocab-sharded (``parallel_output=True``): each TP rank
holds ``[..., V/tp]``. megatron-core's ``tensor_parallel.vocab_parallel_cross_entropy`` turns the shards into
−log p(label) with two all-reduces of ``[...]``-shaped tensors (the max and the sum of exponentials), never
materialising ``[..., V]``. Everything here goes through it, so TP=1 and TP=2 give the same numbers (tested).

Temperature (arXiv 2510.01265 samples thoughts at T = 0.7). Two different distributions are read from one forward:

- the *policy* log-probs of thought tokens, log π_θ(c_u | ·), are those of the sampling distribution,
  softmax(z / T): the ratio ρ_u of eq. 8 and its gradient then refer to the policy that produced the samples;
- the *scorer* log-prob S_pred = log p_θ(x_t | x_<t, c) and the baseline S_ema are at T = 1: they score the data
  under the model itself, as a next-token loss would (eq. 5).

``vocab_parallel_cross_entropy`` writes into its input when that input is already fp32; every call here passes a
fresh tensor (``logits.float() / T`` or an indexed copy), so one logits tensor can feed several calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RLPPipelineError(RuntimeError):
    """A pipeline-parallel layout that RLP cannot run (a partial model without PP, virtual PP, unmet PP settings)."""


def unwrap_model(model) -> torch.nn.Module:
    """Strip Megatron's wrappers (DDP, Float16Module, a one-element model-chunk list) down to the ``GPTModel``."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise RLPPipelineError(f"RLP needs one model chunk (no virtual pipeline), got {len(model)}")
        model = model[0]
    while hasattr(model, "module"):
        model = model.module
    return model


def require_single_stage(model) -> torch.nn.Module:
    """The unwrapped model, checked to hold every layer (pre- and post-process on this rank)."""
    gpt = unwrap_model(model)
    if not (getattr(gpt, "pre_process", True) and getattr(gpt, "post_process", True)):
        raise RLPPipelineError(
            "this rank holds only part of the model (a pipeline stage) but megatron's pipeline parallelism is not "
            "initialised: single-stage RLP generation and scoring need the whole model; under "
            "pipeline_model_parallel_size>1 they run stage to stage (nemo_smartpt.rlp.megatron.pipeline)"
        )
    return gpt


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """``[1, 1, S, S]`` bool, True = masked (megatron's convention). Right padding needs nothing more: a causal
    mask already keeps real tokens from attending to padding that follows them."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)[None, None]


def position_ids_like(input_ids_NL: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """``[N, L]`` positions ``offset .. offset + L − 1`` for every row."""
    L = input_ids_NL.shape[1]
    return torch.arange(offset, offset + L, device=input_ids_NL.device).expand_as(input_ids_NL)


def vocab_parallel_logprobs(
    logits_shard: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, tp_group=None
) -> torch.Tensor:
    """log softmax(z / T)[label] from this rank's vocab shard of the logits.

    Args:
        logits_shard: ``[..., V/tp]`` logits (any float dtype; computed in fp32). Gradient flows if it has one.
        labels: ``[...]`` token ids (global vocabulary ids).
        temperature: T; 1 for the scorer, the sampling temperature for policy log-probs.
        tp_group: tensor-parallel group (None: megatron's global one).

    Returns:
        ``[...]`` fp32 log-probs.
    """
    from megatron.core import tensor_parallel

    # Division makes a fresh tensor even for fp32 input, which vocab_parallel_cross_entropy then modifies in place.
    scaled = logits_shard.float() / temperature
    return -tensor_parallel.vocab_parallel_cross_entropy(scaled, labels, tp_group=tp_group)


def logits_shard(model, input_ids_NL: torch.Tensor, position_ids_NL: torch.Tensor | None = None) -> torch.Tensor:
    """Forward a ``[N, L]`` batch and return the vocab-sharded logits ``[N, L, V/tp]`` (single-stage model)."""
    if position_ids_NL is None:
        position_ids_NL = position_ids_like(input_ids_NL)
    mask = causal_mask(input_ids_NL.shape[1], input_ids_NL.device)
    return model(input_ids_NL, position_ids_NL, mask)


@torch.no_grad()
def score_next_tokens(
    model,
    sequences: Sequence[Sequence[int]],
    predict_index: Sequence[int],
    targets: Sequence[int],
    pad_id: int = 0,
    device=None,
    max_rows: int = 64,
    chunk: int = 1024,
) -> torch.Tensor:
    """log p(targets[i] | sequences[i][: predict_index[i] + 1]) at T = 1, one forward per chunk of rows, no grad.

    Used for the no-thought baseline S_ema (one short sequence per target position, not per rollout). Rows are
    right-padded to a common length; the causal mask keeps padding out of the real tokens' attention. Only the target
    position of each row reaches the output layer (:class:`~nemo_smartpt.rlp.megatron.logits.SelectedLogprobs`, at
    most ``chunk`` positions of logits at a time). Under PP the forward goes stage to stage (collective over the
    pipeline group) and every stage returns the last stage's scores.

    Returns:
        ``[len(sequences)]`` fp32 log-probs on ``device``.
    """
    from functools import partial

    from nemo_smartpt.rlp.megatron.logits import SelectedLogprobs, forward_with_processor
    from nemo_smartpt.rlp.megatron.pipeline import broadcast_from_last_stage, pipeline_size, stage_forward, stage_model

    gpt = stage_model(model)
    pp = pipeline_size()
    out = []
    for lo in range(0, len(sequences), max_rows):
        rows = sequences[lo : lo + max_rows]
        L = max(len(r) for r in rows)
        ids_NL = torch.full((len(rows), L), pad_id, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids_NL[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        N = len(rows)
        rows_N = torch.arange(N, device=ids_NL.device)
        idx_N = torch.as_tensor(list(predict_index[lo : lo + max_rows]), device=ids_NL.device)
        tgt_N = torch.as_tensor(list(targets[lo : lo + max_rows]), dtype=torch.long, device=ids_NL.device)
        target_NL = torch.zeros(N, L, dtype=torch.bool, device=ids_NL.device)
        target_NL[rows_N, idx_N] = True
        labels_NL = torch.zeros(N, L, dtype=torch.long, device=ids_NL.device)
        labels_NL[rows_N, idx_N] = tgt_N
        processor = SelectedLogprobs(
            torch.zeros_like(target_NL), target_NL, labels_NL, torch.ones(N, L, device=ids_NL.device), chunk
        )
        logp_NL = forward_with_processor(
            partial(stage_forward, gpt),
            gpt,
            processor,
            ids_NL,
            position_ids_like(ids_NL),
            causal_mask(L, ids_NL.device),
        )
        if logp_NL is None:  # not the last stage: receive the scores
            out.append(broadcast_from_last_stage(torch.empty(N, dtype=torch.float32, device=ids_NL.device)))
            continue
        logp_N = logp_NL[rows_N, idx_N].float()
        out.append(logp_N if pp == 1 else broadcast_from_last_stage(logp_N.contiguous()))
    return torch.cat(out)
