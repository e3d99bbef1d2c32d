"""The epoch-estimation sweep (arXiv 2412.15285): one plan per repeat count of a category, all else fixed.

The paper estimates how many epochs a domain tolerates by raising its repeats (1, 2, 4, 6, ...) over a base blend and
taking the added weight from low-quality crawl. :func:`epoch_sweep` emits exactly those plans, ready for a Hydra
multirun (``smartpt plan sweep.category=math sweep.epochs=[1,2,4,6]``). Pure logic, like the planner.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nemo_smartpt.blend.catalog import Catalog
from nemo_smartpt.blend.plan_errors import InfeasiblePlanError, PlanError
from nemo_smartpt.blend.planner import (
    PhasePolicy,
    Plan,
    assemble_plan,
    default_phase_policies,
    plan_blend,
    plan_matrix,
    read_caps,
    source_rates,
)
from nemo_smartpt.blend.solver import fmt_tokens


def epoch_sweep(
    catalog: Catalog,
    budget_tokens: float,
    category: str,
    epochs: list[float],
    phase_boundaries: list[float] | None = None,
    policies: list[PhasePolicy] | None = None,
    seed: int = 1234,
    seq_length: int = 0,
    global_batch_size: int = 0,
) -> list[tuple[float, Plan]]:
    """Epoch-estimation ablation: one plan per repeat count of ``category``, all else fixed.

    Starts from the normal plan. For each count ``k`` every unpinned source of ``category`` is drawn exactly ``k``
    epochs, split over the phases as in the normal plan (its ``max_epochs`` becomes ``k``: the sweep is how caps are
    estimated). The tokens it gains (or loses) in each phase are taken from (given to) that phase's lowest-quality crawl
    sources, lowest tier first, in proportion to their planned tokens; nothing else moves.

    Every plan keeps the caps of :func:`~nemo_smartpt.blend.planner.read_caps`, as the normal plan does: with
    ``seq_length`` (and ``global_batch_size``) given, "exactly ``k`` epochs" is ``k`` epochs less the reserve for the
    dataset's roundings, so what training reads stays within ``k`` epochs, and crawl sources take tokens only up to
    their own lowered caps.

    Raises:
        PlanError: no unpinned source has this category.
        InfeasiblePlanError: the crawl of some phase cannot give the tokens, or would pass its cap taking them; or
            ``k`` epochs of a swept source do not cover its rounding reserve.
    """
    policies = default_phase_policies() if policies is None else list(policies)
    base = plan_blend(catalog, budget_tokens, phase_boundaries, policies, seed, seq_length, global_batch_size)
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
        sweep_catalog = Catalog(
            sources=[dataclasses.replace(s, max_epochs=k) if i in swept else s for i, s in enumerate(catalog.sources)],
            tiers=catalog.tiers,
            emphasis_categories=catalog.emphasis_categories,
            path=catalog.path,
            split=catalog.split,
        )
        caps = read_caps(sweep_catalog, len(policies), seq_length, global_batch_size)
        planned = plan_matrix(base)
        for i in swept:
            src = catalog.sources[i]
            row = planned[i]
            split = row / row.sum() if row.sum() > 0 else np.where(rates[i] > 0, phase_tokens, 0.0)
            if split.sum() == 0:
                raise PlanError(f"sweep: source {src.name!r} is in no phase")
            if caps[i] <= 0:
                raise InfeasiblePlanError(
                    f"sweep {category}={k:g} epochs: {k:g} epochs of source {src.name!r} ({fmt_tokens(k * src.tokens)} "
                    f"tokens) leave nothing once the tokens kept for sample rounding at seq_length {seq_length} are "
                    "set aside (pick larger repeat counts)"
                )
            planned[i] = caps[i] * split / split.sum()
        delta = planned.sum(axis=0) - phase_tokens
        for j in range(len(bounds)):
            _take_from_crawl(sweep_catalog, caps, planned, j, delta[j], crawl_cats, category, k, base.phases[j].name)
        phase_names = [p.name for p in base.phases]
        plan = assemble_plan(
            sweep_catalog, base.budget_tokens, bounds, phase_names, planned, seed, seq_length, global_batch_size
        )
        results.append((k, plan))
    return results


def _take_from_crawl(catalog, caps, planned, j, amount, crawl_cats, category, k, phase_name) -> None:
    """Take ``amount`` tokens from phase ``j``'s crawl (give them back if negative), lowest tier first.

    Taking is bounded by what each tier has in the phase (in proportion to it); giving is bounded by the ``caps``
    (:func:`~nemo_smartpt.blend.planner.read_caps`, in proportion to the room left), and spills to the next tier up
    when a tier is full.
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
            share = np.maximum(0.0, [caps[i] - planned[i].sum() for i in group])
        room = share.sum()
        if room <= 0:
            continue
        step = min(amount, room) if amount > 0 else max(amount, -room)
        planned[group, j] -= step * share / room
        amount -= step
    if abs(amount) > tol:
        what = "lacks" if amount > 0 else "has no room under the caps for"
        raise InfeasiblePlanError(
            f"sweep {category}={k:g} epochs: the crawl of phase {phase_name!r} {what} {fmt_tokens(abs(amount))} tokens "
            "(raise the crawl's max_epochs or pick other repeat counts)"
        )
