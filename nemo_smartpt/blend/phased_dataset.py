"""A multi-phase blended dataset on megatron-core: phase 1's blend, then phase 2's, ..., in one run.

Mental model:

- A *component* is one indexed-dataset prefix of one source. Each component has a *stream*: its samples in the order
  training should see them. Sample ``j`` of a stream is ``epoch_datasets[e][j - epoch_start[e]]``.
- **Continuity** (the default): each epoch of a component is its own one-epoch megatron-core ``GPTDataset`` (seed
  ``seed + e`` for epoch ``e``), and the stream is their concatenation. megatron-core's own multi-epoch ``GPTDataset``
  shuffles documents *and* samples across all its epochs at once (``_build_document_index`` over ``num_epochs`` copies,
  then one ``_build_shuffle_index``; ``separate_final_epoch`` only splits off the last epoch), so it repeats documents
  before others were seen once. One ``GPTDataset`` per epoch is the smallest change on top of megatron-core that keeps
  every epoch whole. Epoch 0 uses the run seed and a one-epoch size, which is exactly the ``GPTDataset`` that
  ``BlendedMegatronDatasetBuilder`` builds whenever a source is drawn less than one epoch.
- With ``continuity=False`` a component is one ``GPTDataset`` sized like the builder sizes it
  (``ceil(ceil(n * w) * (1 + mid_level_dataset_surplus))`` summed over phases): megatron-core's own order.
- Per phase, megatron-core's C++ greedy ``build_blending_indices`` picks the component of every sample, and its
  per-phase counter is shifted by the samples each component already served in earlier phases. So phase 2 continues
  a source's stream where phase 1 stopped.
- **When a one-phase plan equals megatron-core's ``BlendedDataset``** (same prefixes, weights, seed, split and sample
  count, sample for sample): always with ``continuity=False``; with ``continuity=True`` (the default) exactly when no
  source is drawn past one epoch of its train split. A source drawn past one epoch differs in every one of its samples
  with continuity on: megatron-core shuffles its multi-epoch ``GPTDataset`` as one index over all epochs, while
  continuity builds one shuffled epoch after another (tested in ``tests/blend/test_phased_dataset.py``). The choice of
  source per sample (``dataset_id``) is the same in all cases.
- The blend index (component and stream position per global sample) is cached under ``path_to_cache`` keyed by the md5
  of a JSON description, like ``BlendedDataset``; with ``torch.distributed`` up, rank 0 builds and the others load.

Every sample is megatron-core's ``GPTDataset`` dict plus ``dataset_id`` (source index into ``source_names``) and
``phase`` (index into ``phase_names``). Index ``i`` is a pure function of the plan and seed, so resuming from
``consumed_samples`` continues the exact stream.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from nemo_smartpt.blend.phased_spec import (
    PhasedDatasetError,
    PhaseSpec,
    SourceDataError,
    SourceSpec,
    check_indexed_prefix,
    check_weights,
    phase_end_samples,
)
from nemo_smartpt.blend.phased_stream import build_phase_blend, rank0_first

logger = logging.getLogger(__name__)


@dataclass
class PhasedDatasetConfig:
    """Settings of a phased dataset (the one home of its defaults)."""

    sequence_length: int
    """Tokens per sample (the model's ``seq_length``)."""
    global_batch_size: int
    """Samples per optimizer step; phase boundaries are rounded to multiples of it."""
    seed: int = 1234
    """Seed of megatron-core's document and sample shuffles (epoch ``e`` of a source uses ``seed + e``)."""
    split: str = "100,0,0"
    """megatron-core split string; the phased dataset reads each prefix's train range, valid/test are held out."""
    path_to_cache: str | None = None
    """Directory for megatron-core's and our index caches. ``None``: megatron-core caches next to the data."""
    continuity: bool = True
    """Continue each source's document order across phases and epochs (see module docstring)."""
    mid_level_dataset_surplus: float = 0.005
    """megatron-core's extra per-source samples; used only with ``continuity=False`` (and for valid/test)."""
    reset_position_ids: bool = False
    """Passed to megatron-core's ``GPTDatasetConfig``."""
    reset_attention_mask: bool = False
    """Passed to megatron-core's ``GPTDatasetConfig``."""
    eod_mask_loss: bool = False
    """Passed to megatron-core's ``GPTDatasetConfig``."""
    create_attention_mask: bool = True
    """Passed to megatron-core's ``GPTDatasetConfig``."""

    def gpt_config(self, prefixes: Sequence[str], tokenizer: Any, seed: int | None = None) -> GPTDatasetConfig:
        """The megatron-core config of the per-source ``GPTDataset`` objects (same identity as the builder's)."""
        return GPTDatasetConfig(
            random_seed=self.seed if seed is None else seed,
            sequence_length=self.sequence_length,
            blend=(list(prefixes), None),
            split=self.split,
            path_to_cache=self.path_to_cache,
            tokenizer=tokenizer,
            mid_level_dataset_surplus=self.mid_level_dataset_surplus,
            reset_position_ids=self.reset_position_ids,
            reset_attention_mask=self.reset_attention_mask,
            eod_mask_loss=self.eod_mask_loss,
            create_attention_mask=self.create_attention_mask,
        )


@dataclass
class _Component:
    """One prefix of one source, with its train documents and (after build) its sample stream."""

    source: int
    prefix: str
    indexed: IndexedDataset
    documents: np.ndarray
    tokens: int
    datasets: list[GPTDataset] = dataclasses.field(default_factory=list)
    starts: list[int] = dataclasses.field(default_factory=list)

    def stream_len(self) -> int:
        return self.starts[-1] + len(self.datasets[-1]) if self.datasets else 0


def open_components(
    sources: Sequence[SourceSpec], config: PhasedDatasetConfig, split: Split = Split.train
) -> list[_Component]:
    """Open and check every prefix of every source; keep its documents of ``split``."""
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(config.split))
    components = []
    for s, source in enumerate(sources):
        if not source.prefixes:
            raise SourceDataError(f"source {source.name!r} has no prefixes")
        for prefix in source.prefixes:
            header = check_indexed_prefix(prefix, source.name)
            indexed = IndexedDataset(prefix, multimodal=False, mmap=True)
            lengths = indexed.sequence_lengths
            last = int(indexed.index.sequence_pointers[-1]) + int(lengths[-1]) * header.token_bytes
            if os.path.getsize(prefix + ".bin") < last:
                raise SourceDataError(f"source {source.name!r}: {prefix}.bin is shorter than its .idx says")
            bookends = matrix[split.value]
            n = header.sequence_count
            beg, end = (0, 0) if bookends is None else (round(bookends[0] * n), round(bookends[1] * n))
            documents = np.arange(beg, end, dtype=np.int32)
            tokens = int(lengths[beg:end].sum(dtype=np.int64))
            components.append(_Component(s, prefix, indexed, documents, tokens))
        # Held-out splits of small sources may be empty; the train split of a source may not.
        if split == Split.train and sum(c.tokens for c in components if c.source == s) == 0:
            raise SourceDataError(f"source {source.name!r} has no tokens in its {split.name} split ({config.split})")
    return components


class PhasedDataset(torch.utils.data.Dataset):
    """Serves phase 1's blend, then phase 2's, ..., with each source continuing where it stopped.

    Args:
        sources: the sources; ``dataset_id`` in samples indexes this list.
        phases: the phases in order; their ``weights`` name sources.
        config: sequence length, global batch size, seed, cache, continuity.
        tokenizer: any object with ``vocab_size``, ``eod``, ``pad`` and JSON-serialisable ``unique_identifiers``.

    Raises:
        PhasedDatasetError: bad phases or weights. SourceDataError: missing, corrupt or empty data.
    """

    def __init__(
        self, sources: Sequence[SourceSpec], phases: Sequence[PhaseSpec], config: PhasedDatasetConfig, tokenizer: Any
    ) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise PhasedDatasetError(f"duplicate source names in {names}")
        check_weights(phases, names)
        self.config = config
        self._sources = list(sources)
        self.source_names = names
        self.phase_names = [p.name for p in phases]
        self.phase_ends = phase_end_samples(phases, config.sequence_length, config.global_batch_size)
        self._components = open_components(sources, config)
        self._weights = self._component_weights(phases, names)
        rank0_first(lambda: self._build(tokenizer))

    def _component_weights(self, phases: Sequence[PhaseSpec], names: list[str]) -> list[list[float]]:
        """Per phase, each component's weight: its source's weight split by the prefixes' token counts."""
        source_tokens = [0] * len(names)
        for c in self._components:
            source_tokens[c.source] += c.tokens
        table = []
        for phase in phases:
            row = []
            for c in self._components:
                w = float(phase.weights.get(names[c.source], 0.0))
                # The share is 1.0 exactly for a one-prefix source, so its weight reaches the C++ helper unchanged.
                row.append(w * (c.tokens / source_tokens[c.source]) if w > 0 and c.tokens else 0.0)
            table.append(row)
        return table

    def _description(self, tokenizer: Any) -> str:
        return json.dumps(
            {
                "class": type(self).__name__,
                "components": [[c.prefix, c.source, int(c.documents.size), c.tokens] for c in self._components],
                "phase_ends": self.phase_ends,
                "weights": self._weights,
                "seed": self.config.seed,
                "sequence_length": self.config.sequence_length,
                "split": self.config.split,
                "continuity": self.config.continuity,
                "tokenizer": getattr(tokenizer, "unique_identifiers", None),
            },
            indent=1,
            default=str,
        )

    def _build(self, tokenizer: Any) -> None:
        description = self._description(tokenizer)
        digest = hashlib.md5(description.encode("utf-8"), usedforsecurity=False).hexdigest()
        self.unique_description_hash = digest
        self.dataset_index, self.dataset_sample_index, counts = build_phase_blend(
            self._weights, self.phase_ends, len(self._components), self.config.path_to_cache, digest, description
        )
        self._check_caps(counts[0])
        for component, need, ceil_need in zip(self._components, counts[0], counts[1]):
            self._build_stream(component, int(need), int(ceil_need), tokenizer)
        self._check_epochs()

    def _check_caps(self, needs) -> None:
        """Refuse to serve a source more tokens than ``max_epochs`` times its train split holds."""
        L = self.config.sequence_length
        for s, source in enumerate(self._sources):
            if source.max_epochs is None:
                continue
            tokens = sum(c.tokens for c in self._components if c.source == s)
            served = L * sum(int(n) for c, n in zip(self._components, needs) if c.source == s)
            if served > source.max_epochs * tokens:
                raise PhasedDatasetError(
                    f"source {source.name!r} would be read {served / tokens:.4f} epochs of its train split "
                    f"({served} of {tokens} tokens, split {self.config.split}), above its max_epochs "
                    f"{source.max_epochs:g}: the plan leaves no room for sample rounding; re-plan with "
                    f"seq_length={L} global_batch_size={self.config.global_batch_size} split={self.config.split}"
                )

    def _check_epochs(self) -> None:
        """With continuity, never start an epoch past ``ceil(max_epochs)`` (each epoch yields whole samples only)."""
        if not self.config.continuity:
            return
        for c in self._components:
            cap = self._sources[c.source].max_epochs
            if cap is not None and len(c.datasets) > math.ceil(cap):
                raise PhasedDatasetError(
                    f"source {self.source_names[c.source]!r}: {c.prefix} would start epoch {len(c.datasets)} with "
                    f"max_epochs {cap:g} (each epoch yields whole samples of {self.config.sequence_length} tokens); "
                    f"re-plan with seq_length={self.config.sequence_length} "
                    f"global_batch_size={self.config.global_batch_size} split={self.config.split}"
                )

    def _build_stream(self, c: _Component, need: int, ceil_need: int, tokenizer: Any) -> None:
        """Build the component's ``GPTDataset`` objects until its stream holds ``need`` samples."""
        if need == 0:
            return
        prefixes = [x.prefix for x in self._components]
        if not self.config.continuity:
            # The builder's sizing, so that one phase equals megatron-core's BlendedDataset exactly.
            size = int(math.ceil(ceil_need * (1 + self.config.mid_level_dataset_surplus)))
            cfg = self.config.gpt_config(prefixes, tokenizer)
            c.datasets, c.starts = [GPTDataset(c.indexed, c.prefix, c.documents, size, Split.train, cfg)], [0]
            if c.stream_len() < need:
                raise PhasedDatasetError(
                    f"source {self.source_names[c.source]!r}: {c.prefix} serves {need} samples but megatron-core "
                    f"built {c.stream_len()}; raise mid_level_dataset_surplus ({self.config.mid_level_dataset_surplus})"
                )
            return
        while c.stream_len() < need:
            # One whole epoch per GPTDataset, each with its own seed: epochs never mix (module docstring).
            cfg = self.config.gpt_config(prefixes, tokenizer, seed=self.config.seed + len(c.datasets))
            epoch = GPTDataset(c.indexed, c.prefix, c.documents, None, Split.train, cfg)
            if len(epoch) == 0:
                raise SourceDataError(
                    f"source {self.source_names[c.source]!r}: {c.prefix} has {c.tokens} train tokens, fewer than one "
                    f"sample of {self.config.sequence_length} + 1 tokens"
                )
            c.starts.append(c.stream_len())
            c.datasets.append(epoch)

    def __len__(self) -> int:
        return self.phase_ends[-1]

    def phase_of(self, idx: int) -> int:
        """Index of the phase that serves global sample ``idx``."""
        return bisect.bisect_right(self.phase_ends, idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} outside [0, {len(self)})")
        c = self._components[self.dataset_index[idx]]
        j = int(self.dataset_sample_index[idx])
        e = bisect.bisect_right(c.starts, j) - 1
        return {"dataset_id": c.source, "phase": self.phase_of(idx), **c.datasets[e][j - c.starts[e]]}

    def epochs_started(self) -> dict[str, int]:
        """Per source, the most epochs any of its prefixes starts (what ``max_epochs`` bounds, rounded up)."""
        out = {name: 0 for name in self.source_names}
        for c in self._components:
            out[self.source_names[c.source]] = max(out[self.source_names[c.source]], len(c.datasets))
        return out

    def source_samples(self, phase: int | None = None) -> np.ndarray:
        """Samples each source serves (in one phase, or in the whole run)."""
        lo, hi = (
            (0, len(self)) if phase is None else ((self.phase_ends[phase - 1] if phase else 0), self.phase_ends[phase])
        )
        per_component = np.bincount(self.dataset_index[lo:hi], minlength=len(self._components))
        out = np.zeros(len(self.source_names), dtype=np.int64)
        np.add.at(out, [c.source for c in self._components], per_component)
        return out

    def source_epochs(self) -> dict[str, float]:
        """Epochs of its train split each source goes through over the run (tokens served / tokens available)."""
        tokens = np.zeros(len(self.source_names), dtype=np.int64)
        for c in self._components:
            tokens[c.source] += c.tokens
        served = self.source_samples() * self.config.sequence_length
        return {n: float(served[i] / tokens[i]) for i, n in enumerate(self.source_names)}
