"""Build train/valid/test datasets from a ``plan.json``: the Megatron-Bridge-free half of the dataset provider.

Train is a :class:`~nemo_smartpt.blend.phased_dataset.PhasedDataset` over the plan's phases (or, for an ablation arm,
one phase with a baseline's weights). Valid and test are megatron-core ``BlendedDataset`` objects over the held-out
document ranges of the same sources (megatron-core's ``split`` string, e.g. ``"98,1,1"``), blended with the run's
aggregate weights (each phase's weights averaged by its share of samples), so validation loss tracks the data the
whole run trains on rather than whichever phase is current.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.utils import Split

from nemo_smartpt.blend.phased_dataset import PhasedDataset, PhasedDatasetConfig, open_components
from nemo_smartpt.blend.phased_spec import (
    PhasedDatasetError,
    PhaseSpec,
    SourceSpec,
    baseline_phase_from_plan,
    phases_from_plan,
    sources_from_plan,
)
from nemo_smartpt.blend.phased_stream import rank0_first

logger = logging.getLogger(__name__)


def phased_dataset_from_plan(
    plan: Mapping, config: PhasedDatasetConfig, tokenizer: Any, baseline: str | None = None
) -> PhasedDataset:
    """The train dataset of a plan: its phases, or one phase with ``plan["baselines"][baseline]`` weights.

    The plan's epoch caps are enforced (the dataset refuses to read a source past ``max_epochs`` of its train split),
    except for the ``natural`` baseline, whose weights follow token counts whatever the caps say. A plan that records
    the split its token counts cover must be served with that split: otherwise its caps would count other documents.
    """
    planned_split = plan.get("split")
    if planned_split and str(planned_split) != str(config.split):
        raise PhasedDatasetError(
            f"the plan counted the train part of split {planned_split} (its epoch caps hold for it) but the dataset "
            f"reads split {config.split}: re-plan with split={config.split} or train with dataset.split={planned_split}"
        )
    phases = phases_from_plan(plan) if baseline is None else baseline_phase_from_plan(plan, baseline)
    return PhasedDataset(sources_from_plan(plan, caps=baseline != "natural"), phases, config, tokenizer)


def aggregate_weights(phases: Sequence[PhaseSpec], phase_ends: Sequence[int]) -> dict[str, float]:
    """Each source's share of the whole run: phase weights averaged by the phases' sample counts."""
    total, start, out = phase_ends[-1], 0, {}
    for phase, end in zip(phases, phase_ends):
        for name, w in phase.weights.items():
            out[name] = out.get(name, 0.0) + w * (end - start) / total
        start = end
    return out


def heldout_dataset(
    sources: Sequence[SourceSpec],
    weights: Mapping[str, float],
    num_samples: int,
    split: Split,
    config: PhasedDatasetConfig,
    tokenizer: Any,
) -> BlendedDataset | None:
    """A megatron-core ``BlendedDataset`` over the ``split`` documents of the sources, or ``None`` if there are none.

    Args:
        sources: the plan's sources.
        weights: source name -> weight (need not be normalised; zeros are skipped).
        num_samples: samples to draw (Megatron-Bridge asks ``eval_iters * global_batch_size`` per evaluation).
        split: ``Split.valid`` or ``Split.test``.
        config: the phased dataset's config (its ``split`` string picks the held-out documents).
        tokenizer: as for the phased dataset.
    """
    if num_samples <= 0:
        return None
    components = [c for c in open_components(sources, config, split) if c.tokens > 0]
    source_tokens: dict[int, int] = {}
    for c in components:
        source_tokens[c.source] = source_tokens.get(c.source, 0) + c.tokens
    parts = []
    for c in components:
        w = float(weights.get(sources[c.source].name, 0.0)) * c.tokens / source_tokens[c.source]
        if w > 0:
            parts.append((c, w))
    if not parts:
        logger.warning(
            "No %s documents in split %s of the plan's sources; no %s dataset", split.name, config.split, split.name
        )
        return None
    total = sum(w for _, w in parts)
    cfg = config.gpt_config([c.prefix for c, _ in parts], tokenizer)

    def build() -> BlendedDataset:
        # Sized like BlendedMegatronDatasetBuilder sizes its mid-level datasets.
        datasets = [
            GPTDataset(
                c.indexed,
                c.prefix,
                c.documents,
                int(math.ceil(math.ceil(num_samples * w / total) * (1 + config.mid_level_dataset_surplus))),
                split,
                cfg,
            )
            for c, w in parts
        ]
        return BlendedDataset(datasets, [w for _, w in parts], num_samples, cfg)

    return rank0_first(build)


def datasets_from_plan(
    plan: Mapping,
    config: PhasedDatasetConfig,
    tokenizer: Any,
    valid_samples: int,
    test_samples: int,
    baseline: str | None = None,
) -> tuple[PhasedDataset, BlendedDataset | None, BlendedDataset | None]:
    """Train (phased), valid and test (held-out) datasets of a plan."""
    train = phased_dataset_from_plan(plan, config, tokenizer, baseline)
    phases = phases_from_plan(plan) if baseline is None else baseline_phase_from_plan(plan, baseline)
    weights = aggregate_weights(phases, train.phase_ends)
    sources = sources_from_plan(plan, caps=False)
    valid = heldout_dataset(sources, weights, valid_samples, Split.valid, config, tokenizer)
    test = heldout_dataset(sources, weights, test_samples, Split.test, config, tokenizer)
    return train, valid, test
