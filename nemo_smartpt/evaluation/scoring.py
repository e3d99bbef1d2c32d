"""Batched scoring and greedy decoding on a Megatron ``GPTModel``, tensor-parallel aware (pure tensor work).

Shapes: ``B`` rows, ``T`` tokens, ``V/tp`` the vocabulary shard of a tensor-parallel rank. Sequences are right-padded
in a batch; the model is causal, so padding after a row's last token never changes that row's logits.

Memory at real shapes: a Megatron forward returns ``B x T x V/tp`` logits (bf16: 8 x 2048 x 152k / 4 = 1.2 GB per
rank at TP=4). Log-probabilities are taken only at the continuation positions (``N`` tokens, ``N x V/tp`` in fp32)
with ``vocab_parallel_cross_entropy``; the greedy token uses a vocab-parallel argmax that all-gathers ``B`` (value,
index) pairs, never the logits.
"""

from __future__ import annotations

import torch


def _tp():
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1, 0, None
    return (
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_group(),
    )


def target_logprobs(logits_NV: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    """log p(target) per row of (vocab-parallel) logits, in fp32, exact across tensor-parallel ranks."""
    tp, _, group = _tp()
    if tp == 1:
        logp = torch.log_softmax(logits_NV.float(), dim=-1)
        return logp.gather(-1, targets_N[:, None])[:, 0]
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    # [N, V/tp] -> [N, 1, V/tp]: megatron's function expects (sequence, batch, vocab shard).
    return -vocab_parallel_cross_entropy(logits_NV.float()[:, None].clone(), targets_N[:, None], tp_group=group)[:, 0]


def vocab_parallel_argmax(logits_NV: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit over the whole vocabulary (ties: the lowest index, as ``torch.argmax``)."""
    tp, rank, group = _tp()
    value_N, index_N = logits_NV.float().max(dim=-1)
    if tp == 1:
        return index_N
    index_N = index_N + rank * logits_NV.shape[-1]
    values = [torch.empty_like(value_N) for _ in range(tp)]
    indices = [torch.empty_like(index_N) for _ in range(tp)]
    torch.distributed.all_gather(values, value_N, group=group)
    torch.distributed.all_gather(indices, index_N, group=group)
    best_N = torch.stack(values).argmax(dim=0)  # first (lowest-rank, so lowest-index) maximum
    return torch.stack(indices).gather(0, best_N[None])[0]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def forward_logits(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad ``rows`` and run the model: ``[B, T, V/tp]`` logits."""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    tokens = tokens.to(_device())
    position_ids = torch.arange(width, device=tokens.device)[None].expand_as(tokens)
    return model(tokens, position_ids, None)


@torch.no_grad()
def continuation_scores(
    model, requests: list[tuple[list[int], list[int]]], max_length: int, pad_id: int
) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), continuation is the greedy output)`` for each request, one batch.

    Context is left-truncated so that context + continuation fits ``max_length`` (the continuation always fits
    whole, as lm-eval requires)."""
    rows, spans = [], []
    for context, continuation in requests:
        whole = (context + continuation)[-(max_length + 1) :]
        rows.append(whole[:-1])
        spans.append((len(whole) - 1 - len(continuation), continuation))
    logits = forward_logits(model, rows, pad_id)
    row_idx = torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, (_, c) in enumerate(spans)])
    pos_idx = torch.cat([torch.arange(start, start + len(c)) for start, c in spans])
    targets = torch.tensor([t for _, c in spans for t in c], dtype=torch.long, device=logits.device)
    picked = logits[row_idx.to(logits.device), pos_idx.to(logits.device)]  # [N, V/tp]
    logp = target_logprobs(picked, targets).cpu()
    greedy = (vocab_parallel_argmax(picked) == targets).cpu()
    out, offset = [], 0
    for _, continuation in spans:
        n = len(continuation)
        out.append((float(logp[offset : offset + n].double().sum()), bool(greedy[offset : offset + n].all())))
        offset += n
    return out


@torch.no_grad()
def greedy_generate(
    model, contexts: list[list[int]], max_new_tokens: int, max_length: int, pad_id: int, stop
) -> list[list[int]]:
    """Greedy continuation of each context (batched, full recompute per step, no KV cache).

    ``stop(row, generated_ids) -> bool`` ends a row (an end-of-document token or a stop string); a row also ends
    at ``max_new_tokens`` or when it reaches ``max_length``. Contexts are left-truncated to leave room for
    ``max_new_tokens``. Cost: ``max_new_tokens`` forwards of the batch, which is what a few hundred held-out items of
    a small model need; a long-generation suite on a large model wants a KV-cached engine.
    """
    keep = max(max_length - max_new_tokens, 1)
    rows = [list(c[-keep:]) for c in contexts]
    generated: list[list[int]] = [[] for _ in rows]
    active = [True] * len(rows)
    for _ in range(max_new_tokens):
        live = [i for i, a in enumerate(active) if a]
        if not live:
            break
        logits = forward_logits(model, [rows[i] for i in live], pad_id)
        last = torch.tensor([len(rows[i]) - 1 for i in live], device=logits.device)
        next_ids = vocab_parallel_argmax(logits[torch.arange(len(live), device=logits.device), last]).tolist()
        for i, token in zip(live, next_ids):
            rows[i].append(token)
            generated[i].append(token)
            if stop(i, generated[i]) or len(rows[i]) >= max_length:
                active[i] = False
    return generated
