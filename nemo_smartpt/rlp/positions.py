"""Target positions for RLP inside packed pretraining samples.

A packed sample is a row of token ids in which documents are separated by an end-of-document (EOD) token, as
Megatron's ``GPTDataset`` writes them. Documents are the maximal EOD-free runs of a row; the EOD itself belongs to no
document and is never a target (predicting "end of text" after a thought says nothing about reasoning). The first run
of a row may be the tail of a document that began in an earlier sample: what is visible is what counts as context.

For each document ``[start, end)`` (v2 of the paper: one target per document) we draw ``num_positions`` distinct
targets ``t`` uniformly from ``[start + min_context, end)``, so every target has at least ``min_context`` tokens of
context from its own document; the context is ``[max(start, t − max_context), t)`` (the most recent tokens). A
document with no admissible target (fewer than ``min_context + 1`` tokens) is skipped and counted. Draws come only
from the given ``torch.Generator`` (or seed), in row-then-document order, so results are reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass(frozen=True)
class TargetPosition:
    """One RLP target: x_t = ``tokens[row, target_index]``, context = ``tokens[row, context_start:target_index]``."""

    row: int
    """Row of the batch (0 for a single ``[S]`` sample)."""
    doc_id: int
    """Index of the document within its row (0-based, counting only non-empty documents)."""
    target_index: int
    context_start: int
    doc_start: int
    doc_end: int
    """Exclusive end of the document (the index of its EOD, or the row length)."""

    @property
    def context_len(self) -> int:
        return self.target_index - self.context_start


@dataclasses.dataclass
class PositionSample:
    """The positions drawn from one batch, with the bookkeeping that metrics need."""

    positions: list[TargetPosition]
    num_documents: int
    """Non-empty documents seen."""
    num_skipped: int
    """Documents too short for ``min_context`` (no target drawn)."""


def document_spans(tokens_S: Sequence[int] | torch.Tensor, eod_id: int) -> list[tuple[int, int]]:
    """Maximal EOD-free ``[start, end)`` runs of one row; empty runs (consecutive EODs) are dropped."""
    ids = tokens_S.tolist() if isinstance(tokens_S, torch.Tensor) else list(tokens_S)
    spans, start = [], 0
    for i, tok in enumerate(ids):
        if tok == eod_id:
            if i > start:
                spans.append((start, i))
            start = i + 1
    if len(ids) > start:
        spans.append((start, len(ids)))
    return spans


def sample_target_positions(
    tokens: torch.Tensor | Sequence[int],
    eod_id: int,
    num_positions: int = 1,
    min_context: int = 32,
    max_context: int = 2048,
    generator: torch.Generator | int | None = None,
) -> PositionSample:
    """Draw RLP target positions per document of ``[S]`` or ``[B, S]`` packed token ids.

    Args:
        tokens: token ids, one row ``[S]`` or a batch ``[B, S]``.
        eod_id: the end-of-document id separating packed documents.
        num_positions: distinct targets per document; a document with fewer admissible targets gives all of them.
        min_context: fewest context tokens from the same document before a target (>= 1).
        max_context: the context keeps at most this many most recent tokens (>= min_context).
        generator: a ``torch.Generator``, or an int seed; ``None`` uses a fresh generator seeded 0 (deterministic).

    Returns:
        :class:`PositionSample` with records in row, document, then ascending target order.
    """
    if num_positions < 1:
        raise ValueError(f"num_positions must be >= 1, got {num_positions}")
    if min_context < 1:
        raise ValueError(f"min_context must be >= 1, got {min_context}")
    if max_context < min_context:
        raise ValueError(f"max_context ({max_context}) must be >= min_context ({min_context})")
    if not isinstance(generator, torch.Generator):
        seed = 0 if generator is None else int(generator)
        generator = torch.Generator().manual_seed(seed)

    tokens_BS = torch.as_tensor(tokens)
    if tokens_BS.dim() == 1:
        tokens_BS = tokens_BS[None]
    if tokens_BS.dim() != 2:
        raise ValueError(f"tokens must be [S] or [B, S], got shape {tuple(tokens_BS.shape)}")

    positions: list[TargetPosition] = []
    num_documents = num_skipped = 0
    for row in range(tokens_BS.shape[0]):
        for doc_id, (start, end) in enumerate(document_spans(tokens_BS[row], eod_id)):
            num_documents += 1
            first = start + min_context  # earliest target with min_context tokens of its own document before it
            num_candidates = end - first
            if num_candidates <= 0:
                num_skipped += 1
                continue
            k = min(num_positions, num_candidates)
            # randperm on the CPU generator: uniform without replacement; for k = 1 this is a uniform draw.
            picks = torch.randperm(num_candidates, generator=generator)[:k].sort().values
            for offset in picks.tolist():
                t = first + offset
                positions.append(
                    TargetPosition(
                        row=row,
                        doc_id=doc_id,
                        target_index=t,
                        context_start=max(start, t - max_context),
                        doc_start=start,
                        doc_end=end,
                    )
                )
    return PositionSample(positions=positions, num_documents=num_documents, num_skipped=num_skipped)


def gather_context(tokens: torch.Tensor | Sequence[int], position: TargetPosition) -> tuple[list[int], int]:
    """``(context_ids, target_id)`` of a position, from the same ``[S]`` or ``[B, S]`` tokens it was drawn from."""
    tokens_BS = torch.as_tensor(tokens)
    if tokens_BS.dim() == 1:
        tokens_BS = tokens_BS[None]
    row = tokens_BS[position.row]
    return row[position.context_start : position.target_index].tolist(), int(row[position.target_index])
