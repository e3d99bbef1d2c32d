"""Inputs of the phased dataset: phase and source specs, reading them from a plan, and checking the data files.

Mental model: a run is a list of phases; phase ``k`` owns the global sample range ``[end_{k-1}, end_k)`` and blends
sources with its own weights. A phase ends either at an explicit sample index or at a planned token count. Token
boundaries become sample boundaries by two roundings, both half-up and both integer-exact:

1. ``samples = round(end_token / seq_length)``: every sample holds ``seq_length`` new tokens (the extra label token of
   megatron-core's ``add_extra_token_to_sequence`` overlaps the next sample), so tokens/seq_length is the sample count;
2. ``end_sample = round(samples / global_batch_size) * global_batch_size``: the switch falls between two optimizer
   steps, so no global batch mixes two blends and ``phase_change_iteration = end_sample / global_batch_size``.

A boundary may move by at most half a global batch of samples from the plan; a phase that rounds to zero samples is an
error (it would vanish silently otherwise).

Data files are checked here, before megatron-core opens them, because megatron-core answers a missing or corrupt
``.idx`` with an ``assert`` or a segfault (its arrays are views into an mmap), never with the file's name.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Layout of megatron-core's ``.idx`` (indexed_dataset._IndexWriter): magic, version, dtype code, counts.
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEAD = struct.Struct("<9sQBQQ")
# dtype code -> bytes per token (indexed_dataset.DType)
_DTYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
WEIGHT_TOLERANCE = 1e-6
"""How far a phase's weights may sum from 1 (plans are written as JSON floats)."""


class PhasedDatasetError(ValueError):
    """A plan, phase or source that the phased dataset cannot serve."""


class SourceDataError(PhasedDatasetError):
    """A source's Megatron indexed dataset (``.bin``/``.idx``) is missing, corrupt or empty."""


@dataclass(frozen=True)
class SourceSpec:
    """One named source: one or more Megatron indexed-dataset prefixes read as one document stream.

    Attributes:
        name: the name phases use in their ``weights``.
        prefixes: paths without ``.bin``/``.idx``; several prefixes share the source's weight in proportion to their
            (train-split) token counts.
        max_epochs: the most passes over the source's train split; the dataset refuses to serve more (``None``: no
            cap, as for the ``natural`` baseline).
    """

    name: str
    prefixes: tuple[str, ...]
    max_epochs: float | None = None


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of the run.

    Attributes:
        name: shown in logs and returned by ``PhasedDataset.phase_names``.
        weights: source name -> weight; must sum to 1 (zero weights are allowed and skipped).
        end_sample: exclusive global sample index where the phase ends (a multiple of the global batch size).
        end_token: planned token count at the end of the phase; converted as the module docstring says.
            Give exactly one of ``end_sample`` and ``end_token``.
    """

    name: str
    weights: Mapping[str, float]
    end_sample: int | None = None
    end_token: int | None = None


def round_half_up(numerator: int, denominator: int) -> int:
    """Integer ``round(numerator / denominator)`` with halves rounded up (no float error at 1e15 tokens)."""
    return (2 * numerator + denominator) // (2 * denominator)


def phase_end_samples(phases: Sequence[PhaseSpec], sequence_length: int, global_batch_size: int) -> list[int]:
    """Convert each phase's end to a global sample index, rounded to whole global batches.

    Args:
        phases: the phases, in order.
        sequence_length: tokens per sample.
        global_batch_size: samples per optimizer step.

    Returns:
        The exclusive end sample of every phase (strictly increasing multiples of ``global_batch_size``).

    Raises:
        PhasedDatasetError: an end is missing, doubly given, not a batch multiple, or a phase is empty.
    """
    if not phases:
        raise PhasedDatasetError("a phased dataset needs at least one phase")
    if sequence_length <= 0 or global_batch_size <= 0:
        raise PhasedDatasetError(
            f"sequence_length {sequence_length} and global_batch_size {global_batch_size} must be > 0"
        )
    ends: list[int] = []
    for phase in phases:
        if (phase.end_sample is None) == (phase.end_token is None):
            raise PhasedDatasetError(f"phase {phase.name!r}: give exactly one of end_sample and end_token")
        if phase.end_sample is not None:
            end = int(phase.end_sample)
            if end % global_batch_size:
                raise PhasedDatasetError(
                    f"phase {phase.name!r}: end_sample {end} is not a multiple of global_batch_size {global_batch_size}"
                )
        else:
            samples = round_half_up(int(phase.end_token), sequence_length)
            end = round_half_up(samples, global_batch_size) * global_batch_size
        start = ends[-1] if ends else 0
        if end <= start:
            raise PhasedDatasetError(
                f"phase {phase.name!r} ends at sample {end}, not after its start {start} (after rounding to "
                f"global batches of {global_batch_size} samples of {sequence_length} tokens); merge it or make it longer"
            )
        ends.append(end)
    return ends


def check_weights(phases: Sequence[PhaseSpec], source_names: Sequence[str]) -> None:
    """Raise if a phase names an unknown source, has a negative weight, or does not sum to 1."""
    known = set(source_names)
    for phase in phases:
        unknown = sorted(set(phase.weights) - known)
        if unknown:
            raise PhasedDatasetError(
                f"phase {phase.name!r} weights unknown source(s) {unknown}; known sources: {sorted(known)}"
            )
        negative = {name: w for name, w in phase.weights.items() if not w >= 0.0}
        if negative:
            raise PhasedDatasetError(f"phase {phase.name!r} has negative or NaN weights {negative}")
        total = math.fsum(phase.weights.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise PhasedDatasetError(
                f"phase {phase.name!r} weights sum to {total!r}, not 1 (tolerance {WEIGHT_TOLERANCE})"
            )


def sources_from_plan(plan: Mapping, caps: bool = True) -> list[SourceSpec]:
    """Read ``plan["sources"]`` (``name``, ``prefixes`` and, with ``caps``, ``max_epochs``) into source specs."""
    try:
        return [
            SourceSpec(
                str(s["name"]),
                tuple(str(p) for p in s["prefixes"]),
                float(s["max_epochs"]) if caps and s.get("max_epochs") is not None else None,
            )
            for s in plan["sources"]
        ]
    except (KeyError, TypeError) as error:
        raise PhasedDatasetError(f"plan sources need 'name' and 'prefixes': {error!r}") from error


def phases_from_plan(plan: Mapping) -> list[PhaseSpec]:
    """Read ``plan["phases"]`` into phase specs that end at their planned ``end_token``.

    Args:
        plan: the planner's ``plan.json`` content.

    Returns:
        One ``PhaseSpec(name, weights, end_token=...)`` per phase, in plan order.
    """
    try:
        return [
            PhaseSpec(name=str(p["name"]), weights=dict(p["weights"]), end_token=int(p["end_token"]))
            for p in plan["phases"]
        ]
    except (KeyError, TypeError) as error:
        raise PhasedDatasetError(f"plan phases need 'name', 'end_token' and 'weights': {error!r}") from error


def baseline_phase_from_plan(plan: Mapping, baseline: str) -> list[PhaseSpec]:
    """One phase over the whole budget with a baseline's weights (how the ablation arms run).

    Args:
        plan: the planner's ``plan.json`` content.
        baseline: ``"natural"`` or ``"random_order"`` (any key of ``plan["baselines"]``).

    Returns:
        A single ``PhaseSpec`` ending at ``plan["budget_tokens"]``.
    """
    baselines = plan.get("baselines", {})
    if baseline not in baselines:
        raise PhasedDatasetError(f"plan has no baseline {baseline!r}; it has {sorted(baselines)}")
    entry = baselines[baseline]
    # The planner may store the weights directly or under "weights" next to other fields.
    weights = entry["weights"] if isinstance(entry.get("weights"), Mapping) else entry
    return [PhaseSpec(name=baseline, weights=dict(weights), end_token=int(plan["budget_tokens"]))]


@dataclass(frozen=True)
class IndexHeader:
    """What a ``.idx`` header says: token dtype width and sequence/document counts."""

    token_bytes: int
    sequence_count: int
    document_count: int


def check_indexed_prefix(prefix: str, source: str) -> IndexHeader:
    """Check a Megatron indexed dataset's files before megatron-core mmaps them.

    Args:
        prefix: path without ``.bin``/``.idx``.
        source: the source name, for the error message.

    Returns:
        The parsed header.

    Raises:
        SourceDataError: a file is missing, the ``.idx`` is corrupt or truncated, the ``.bin`` is shorter than the
            index says, or the prefix holds no sequence.
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise SourceDataError(f"source {source!r}: file {path} not found")
    idx_size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as stream:
        head = stream.read(_IDX_HEAD.size)
    if len(head) < _IDX_HEAD.size:
        raise SourceDataError(f"source {source!r}: {idx_path} is truncated ({idx_size} bytes, no full header)")
    magic, version, code, n_seq, n_doc = _IDX_HEAD.unpack(head)
    if magic != _IDX_MAGIC or version != 1 or code not in _DTYPE_BYTES:
        raise SourceDataError(
            f"source {source!r}: {idx_path} is not a Megatron indexed-dataset index "
            f"(magic {magic!r}, version {version}, dtype code {code})"
        )
    # lengths int32 + pointers int64 per sequence, then int64 document boundaries (doc count + 1 entries).
    expected = _IDX_HEAD.size + 12 * n_seq + 8 * n_doc
    if idx_size < expected:
        raise SourceDataError(
            f"source {source!r}: {idx_path} is corrupt or truncated: header promises {n_seq} sequences and "
            f"{n_doc} document boundaries ({expected} bytes) but the file has {idx_size} bytes"
        )
    if n_seq == 0 or n_doc < 2:
        raise SourceDataError(f"source {source!r}: {prefix} is empty (0 documents)")
    return IndexHeader(token_bytes=_DTYPE_BYTES[code], sequence_count=n_seq, document_count=n_doc - 1)
