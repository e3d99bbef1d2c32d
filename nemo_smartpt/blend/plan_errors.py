"""The planner's errors: one class per way a plan request can fail, all :class:`PlanError` (a ``ValueError``)."""

from __future__ import annotations


class PlanError(ValueError):
    """A plan request that cannot be satisfied or does not make sense."""


class InfeasiblePlanError(PlanError):
    """No blend meets the budget without drawing some source past ``max_epochs``."""


class BudgetError(PlanError):
    """A budget or phase boundary that is not usable (budget <= 0, boundaries out of order, empty phase)."""


class ShareError(PlanError):
    """Pinned shares that do not fit in a phase (they must leave room for the other sources)."""
