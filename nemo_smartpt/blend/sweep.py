"""The epoch-estimation sweep (arXiv 2412.15285): one plan per repeat count of a category, all else fixed.

The paper estimates how many epochs a domain tolerates by raising its repeats (1, 2, 4, 6, ...) over a base blend and
taking the added weight from low-quality crawl. :func:`epoch_sweep` emits exactly those plans, ready for a Hydra
multirun (``smartpt plan sweep.category=math sweep.epochs=[1,2,4,6]``). Pure logic, like the planner.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nemo_smartpt.blend.catalog import Catalog
from nemo_smartpt.blend.planner import (
    InfeasiblePlanError,
    PhasePolicy,
    Plan,
    PlanError,
    _fmt,
    assemble_plan,
    default_phase_policies,
    plan_blend,
    plan_matrix,
    source_rates,
)


def epoch_sweep(
    catalog: Catalog,
    budget_tokens: float,
    category: str,
    epochs: list[float],
    phase_boundaries: list[float] | None = None,
    policies: list[PhasePolicy] | None = None,
    seed: int = 1234,
) -> list[tuple[float, Plan]]:
    """Epoch-estimation ablation: one plan per repeat count of ``category``, all else fixed.

    Starts from the normal plan. For each count ``k`` every unpinned source of ``category`` is drawn exactly ``k``
    epochs, split over the phases as in the normal plan (its ``max_epochs`` becomes ``k``: the sweep is how caps are
    estimated). The tokens it gains (or loses) in each phase are taken from (given to) that phase's lowest-quality crawl
    sources, lowest tier first, in proportion to their planned tokens; nothing else moves.

    Raises:
        PlanError: no unpinned source has this category.
        InfeasiblePlanError: the crawl of some phase cannot give the tokens, or would pass its cap taking them.
    """
    policies = default_phase_policies() if policies is None else list(policies)
    base = plan_blend(catalog, budget_tokens, phase_boundaries, policies, seed)
    swept = [i for i, s in enumerate(catalog.sources) if s.category == category and s.target_share is None]
    if not swept:
        raise PlanError(f"sweep: no unpinned source has category {category!r}")
    crawl_cats = {c for p in policies for c in p.crawl_categories} - {category}
    rates = source_rates(catalog, policies)
    bounds = [(p.start_token, p.end_token) for p in base.phases]
    phase_tokens = np.array([float(p.tokens) for p in base.phases])
    results = []
    for k in epochs:
        if not k > 0:
            raise PlanError(f"sweep: repeat counts must be > 0, got {k!r}")
        planned = plan_matrix(base)
        for i in swept:
            row = planned[i]
            split = row / row.sum() if row.sum() > 0 else np.where(rates[i] > 0, phase_tokens, 0.0)
            if split.sum() == 0:
                raise PlanError(f"sweep: source {catalog.sources[i].name!r} is in no phase")
            planned[i] = k * catalog.sources[i].tokens * split / split.sum()
        delta = planned.sum(axis=0) - phase_tokens
        for j in range(len(bounds)):
            _take_from_crawl(catalog, planned, j, delta[j], crawl_cats, category, k, base.phases[j].name)
        sweep_catalog = Catalog(
            sources=[dataclasses.replace(s, max_epochs=k) if i in swept else s for i, s in enumerate(catalog.sources)],
            tiers=catalog.tiers,
            emphasis_categories=catalog.emphasis_categories,
            path=catalog.path,
        )
        results.append(
            (k, assemble_plan(sweep_catalog, base.budget_tokens, bounds, [p.name for p in base.phases], planned, seed))
        )
    return results


def _take_from_crawl(catalog, planned, j, amount, crawl_cats, category, k, phase_name) -> None:
    """Take ``amount`` tokens from phase ``j``'s crawl (give them back if negative), lowest tier first.

    Taking is bounded by what each tier has in the phase (in proportion to it); giving is bounded by the caps (in
    proportion to the room left), and spills to the next tier up when a tier is full.
    """
    crawl = [
        i
        for i, s in enumerate(catalog.sources)
        if s.category in crawl_cats and s.target_share is None and planned[i, j] > 0
    ]
    tol = 1e-9 * max(planned[:, j].sum(), 1.0)
    for tier in sorted({catalog.sources[i].quality for i in crawl}, key=lambda t: catalog.tiers[t]):
        if abs(amount) <= tol:
            break
        group = [i for i in crawl if catalog.sources[i].quality == tier]
        if amount > 0:
            share = planned[group, j]
        else:
            share = np.maximum(0.0, [catalog.sources[i].cap_tokens - planned[i].sum() for i in group])
        room = share.sum()
        if room <= 0:
            continue
        step = min(amount, room) if amount > 0 else max(amount, -room)
        planned[group, j] -= step * share / room
        amount -= step
    if abs(amount) > tol:
        what = "lacks" if amount > 0 else "has no room under the caps for"
        raise InfeasiblePlanError(
            f"sweep {category}={k:g} epochs: the crawl of phase {phase_name!r} {what} {_fmt(abs(amount))} tokens "
            "(raise the crawl's max_epochs or pick other repeat counts)"
        )
