"""Curriculum blending: catalog -> plan -> (phased dataset).

Mental model:

1. :mod:`~nemo_smartpt.blend.catalog` describes the data: sources (Megatron indexed-dataset prefixes) with a quality
   tier, a category and an epoch cap; token and document counts come from the ``.idx`` files.
2. :mod:`~nemo_smartpt.blend.planner` (pure logic) turns a catalog and a token budget into a multi-phase :class:`Plan`:
   equal tier -> equal per-token weight, higher tier -> more weight, phase 1 diverse, phase 2 high-quality crawl plus
   up-weighted math/code/wiki/reasoning, never past a source's ``max_epochs``; pinned ``target_share`` sources (reasoning
   injection) take an exact share of their phases.
3. :mod:`~nemo_smartpt.blend.plan_io` writes and reads ``plan.json`` (the contract), a table, a PNG, and per-phase
   exports for Megatron-LM ``--data-path`` and Megatron-Bridge ``dataset.blend``; ``smartpt plan`` drives all three.

Importing this package does not import Megatron.
"""

from nemo_smartpt.blend.catalog import (
    Catalog,
    CatalogError,
    EmptySourceError,
    IndexFileError,
    InvalidCapError,
    Source,
    UnknownTierError,
    load_catalog,
)
from nemo_smartpt.blend.plan_io import PlanFileError, load_plan, save_plan
from nemo_smartpt.blend.planner import (
    BudgetError,
    InfeasiblePlanError,
    PhasePlan,
    PhasePolicy,
    Plan,
    PlanError,
    ShareError,
    SourcePlan,
    plan_blend,
)
from nemo_smartpt.blend.sweep import epoch_sweep

__all__ = [
    "BudgetError",
    "Catalog",
    "CatalogError",
    "EmptySourceError",
    "IndexFileError",
    "InfeasiblePlanError",
    "InvalidCapError",
    "PhasePlan",
    "PhasePolicy",
    "Plan",
    "PlanError",
    "PlanFileError",
    "ShareError",
    "Source",
    "SourcePlan",
    "UnknownTierError",
    "epoch_sweep",
    "load_catalog",
    "load_plan",
    "plan_blend",
    "save_plan",
]
