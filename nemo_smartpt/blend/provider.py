"""Megatron-Bridge dataset provider for a blend plan: ``cfg.dataset = PhasedPlanDatasetProvider(plan_path=...)``.

Bridge calls ``build_datasets(context)`` on every rank with the sample counts it derived from ``train_iters`` and the
validation settings; we return the phased train dataset and held-out valid/test blends (see
:mod:`nemo_smartpt.blend.phased_build`). Every field is a dataclass field, so Hydra overrides such as
``dataset.plan_path=out/plan.json dataset.baseline=random_order dataset.split=98,1,1`` reach it through Bridge's
``process_config_with_overrides``.

Importing this module imports ``megatron.bridge``, which on a CPU-only machine needs :mod:`nemo_smartpt.runtime`'s
shims first; the dataset logic itself lives in bridge-free modules and is tested without Bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from megatron.bridge.data.base import DatasetBuildContext, DatasetProvider

from nemo_smartpt.blend.phased_build import datasets_from_plan
from nemo_smartpt.blend.phased_dataset import PhasedDatasetConfig
from nemo_smartpt.blend.phased_spec import PhasedDatasetError
from nemo_smartpt.blend.plan_io import read_plan_json


@dataclass(kw_only=True)
class PhasedPlanDatasetProvider(DatasetProvider):
    """Train on a plan's phases in one run; validate on held-out documents of the same sources."""

    plan_path: str
    """Path of the planner's ``plan.json``."""
    seq_length: int
    """Tokens per sample; must equal the model's ``seq_length``."""
    global_batch_size: int | None = None
    """Samples per step for rounding phase boundaries; ``None`` reads megatron-core's microbatch calculator."""
    baseline: str | None = None
    """``None`` trains the plan's phases; ``"natural"`` or ``"random_order"`` trains that one-phase baseline."""
    seed: int | None = None
    """Shuffle seed; ``None`` uses the plan's ``seed``."""
    split: str = "98,1,1"
    """megatron-core split string: train/valid/test document ranges of every source prefix."""
    path_to_cache: str | None = None
    """Index cache directory (megatron-core's and ours); ``None`` caches next to the data."""
    continuity: bool = True
    """Continue each source's document order across phases and epochs."""
    mid_level_dataset_surplus: float = 0.005
    """megatron-core's per-source sample surplus (valid/test, and train with ``continuity=False``)."""
    reset_position_ids: bool = False
    """As in megatron-core's ``GPTDatasetConfig``."""
    reset_attention_mask: bool = False
    """As in megatron-core's ``GPTDatasetConfig``."""
    eod_mask_loss: bool = False
    """As in megatron-core's ``GPTDatasetConfig``."""
    create_attention_mask: bool = True
    """As in megatron-core's ``GPTDatasetConfig``."""
    dataloader_type: Literal["single", "cyclic", "batch", "external"] | None = "single"
    """Bridge's pretraining sampler: resumes from ``consumed_train_samples`` in order."""

    def _resolve_global_batch_size(self) -> int:
        if self.global_batch_size is not None:
            return self.global_batch_size
        try:
            from megatron.core.num_microbatches_calculator import get_current_global_batch_size

            return int(get_current_global_batch_size())
        except (ImportError, AssertionError, AttributeError, TypeError) as error:
            raise PhasedDatasetError(
                "PhasedPlanDatasetProvider.global_batch_size is unset and megatron-core's microbatch calculator is "
                "not initialised; set dataset.global_batch_size"
            ) from error

    def dataset_config(self, plan: dict) -> PhasedDatasetConfig:
        """The phased dataset config these fields describe (``seed`` falls back to the plan's)."""
        return PhasedDatasetConfig(
            sequence_length=self.seq_length,
            global_batch_size=self._resolve_global_batch_size(),
            seed=int(plan.get("seed", 1234)) if self.seed is None else self.seed,
            split=self.split,
            path_to_cache=self.path_to_cache,
            continuity=self.continuity,
            mid_level_dataset_surplus=self.mid_level_dataset_surplus,
            reset_position_ids=self.reset_position_ids,
            reset_attention_mask=self.reset_attention_mask,
            eod_mask_loss=self.eod_mask_loss,
            create_attention_mask=self.create_attention_mask,
        )

    def build_datasets(self, context: DatasetBuildContext) -> tuple[Any | None, Any | None, Any | None]:
        """Build (train, valid, test) for Bridge.

        Raises:
            PhasedDatasetError: no tokenizer in the context, or the trainer asks for more samples than the plan has.
        """
        if context.tokenizer is None:
            raise PhasedDatasetError("PhasedPlanDatasetProvider needs the tokenizer Bridge passes in its context")
        plan = read_plan_json(self.plan_path)
        train, valid, test = datasets_from_plan(
            plan,
            self.dataset_config(plan),
            context.tokenizer,
            context.valid_samples,
            context.test_samples,
            baseline=self.baseline,
        )
        if context.train_samples > len(train):
            raise PhasedDatasetError(
                f"the trainer asks for {context.train_samples} samples but plan {self.plan_path} holds {len(train)} "
                f"({plan.get('budget_tokens')} tokens / seq_length {self.seq_length}, rounded to global batches); "
                f"lower train.train_iters or re-plan with a larger budget"
            )
        return train, valid, test
