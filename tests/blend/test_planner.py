"""Planner rules: properties over random catalogs (hypothesis) plus the named-error cases and the sweep."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from nemo_smartpt.blend.catalog import DEFAULT_TIERS, Catalog, InvalidCapError, Source, UnknownTierError
from nemo_smartpt.blend.planner import (
    BudgetError,
    InfeasiblePlanError,
    PhasePolicy,
    PlanError,
    ShareError,
    default_phase_policies,
    plan_blend,
    plan_matrix,
    source_rates,
)
from nemo_smartpt.blend.sweep import epoch_sweep

TIERS = list(DEFAULT_TIERS)
CATEGORIES = ["crawl", "crawl", "crawl", "math", "code", "wiki", "books"]


def src(name, quality="high", category="crawl", tokens=1000, max_epochs=4.0, **kw) -> Source:
    return Source(name, [f"/data/{name}"], quality, category, max_epochs, tokens, tokens // 10, [tokens], **kw)


@st.composite
def catalogs(draw):
    n = draw(st.integers(1, 9))
    sources = []
    for i in range(n):
        pinned = draw(st.booleans()) and draw(st.integers(0, 3)) == 0
        sources.append(
            src(
                f"s{i}",
                quality=draw(st.sampled_from(TIERS)),
                category=draw(st.sampled_from(CATEGORIES)),
                tokens=draw(st.integers(1, 10**6)),
                max_epochs=draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 16.0])),
                target_share=draw(st.floats(0.01, 0.3)) if pinned else None,
                phases=draw(st.sampled_from([None, ["phase1"], ["phase2"], ["phase1", "phase2"]])),
            )
        )
    return Catalog(sources)


def lp_feasible(catalog, policies, bounds_tokens) -> bool:
    """Independent check with a linear program: can the free sources fill what the pinned ones leave, within caps?"""
    rates = source_rates(catalog, policies)
    demand = np.array(bounds_tokens, dtype=float)
    free = []
    for i, s in enumerate(catalog.sources):
        if s.target_share is None:
            free.append(i)
            continue
        need = s.target_share * demand[rates[i] > 0]
        if need.sum() > s.cap_tokens * (1 + 1e-9):
            return False
    for j in range(len(policies)):
        share = sum(s.target_share for i, s in enumerate(catalog.sources) if s.target_share and rates[i, j] > 0)
        if share >= 1:
            return False
        demand[j] *= 1 - share
    edges = [(i, j) for i in free for j in range(len(policies)) if rates[i, j] > 0]
    if not edges:
        return False
    a_eq = np.array([[1.0 if e[1] == j else 0.0 for e in edges] for j in range(len(policies))])
    a_ub = np.array([[1.0 if e[0] == i else 0.0 for e in edges] for i in free])
    b_ub = np.array([catalog.sources[i].cap_tokens for i in free])
    res = linprog(np.zeros(len(edges)), A_ub=a_ub, b_ub=b_ub * (1 + 1e-9), A_eq=a_eq, b_eq=demand, method="highs")
    return res.status == 0


def check_plan(catalog, plan, policies):
    rates = source_rates(catalog, policies)
    tokens = plan_matrix(plan)
    emphasis = np.array([s.category in catalog.emphasis_categories for s in catalog.sources])
    for j, phase in enumerate(plan.phases):
        w = np.array([phase.weights[s.name] for s in catalog.sources])
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
        assert np.all(w[rates[:, j] == 0] == 0)  # excluded sources (tier filter, phase list) get nothing
    for i, s in enumerate(catalog.sources):
        assert tokens[i].sum() <= s.cap_tokens * (1 + 1e-9) + 1e-6, s.name
        assert plan.sources[i].planned_tokens <= s.cap_tokens
        if s.target_share is not None:
            for j, phase in enumerate(plan.phases):
                expect = s.target_share if rates[i, j] > 0 else 0.0
                assert phase.weights[s.name] == pytest.approx(expect, rel=1e-9, abs=1e-12)
    # Tier order: among free, uncapped sources of a phase with the same emphasis status, per-token weight is
    # proportional to the tier weight (equal tier -> equal weight, higher tier -> more); capped ones take less.
    uncapped = tokens.sum(axis=1) < np.array([s.cap_tokens for s in catalog.sources]) * (1 - 1e-7)
    free = np.array([s.target_share is None for s in catalog.sources])
    per_token = tokens / np.array([s.tokens for s in catalog.sources], dtype=float)[:, None]
    for j in range(len(plan.phases)):
        for emph in (True, False):
            group = np.flatnonzero(free & (rates[:, j] > 0) & (emphasis == emph))
            ratio = per_token[group, j] / rates[group, j]
            ok = uncapped[group]
            if ok.any():
                assert np.allclose(ratio[ok], ratio[ok][0], rtol=1e-6)
                assert np.all(ratio[~ok] <= ratio[ok][0] * (1 + 1e-6))
                tiers = [catalog.tiers[catalog.sources[i].quality] for i in group[ok]]
                order = np.argsort(tiers)
                assert np.all(np.diff(per_token[group[ok], j][order]) >= -1e-9 * per_token[group[ok], j].max())
    for name in ("natural", "random_order"):
        assert sum(plan.baselines[name].values()) == pytest.approx(1.0)
    for i, s in enumerate(plan.sources):  # BASE-RO: the plan's aggregate shares
        assert plan.baselines["random_order"][s.name] == pytest.approx(tokens[i].sum() / tokens.sum(), abs=1e-9)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(catalog=catalogs(), scale=st.floats(0.05, 2.5), boundary=st.sampled_from([0.5, 0.6, 0.8]))
def test_random_catalogs_plan_or_raise_named_error(catalog, scale, boundary):
    # Budgets around the catalog's size, so that caps bind in a good fraction of the examples.
    budget = max(10, int(scale * sum(s.tokens for s in catalog.sources)))
    policies = default_phase_policies()
    bounds = [round(boundary * budget), budget - round(boundary * budget)]
    try:
        plan = plan_blend(catalog, budget, [boundary], policies)
    except PlanError as exc:
        if "is in no phase" in str(exc):  # a pinned source that its phases or the tier filter exclude everywhere
            rates = source_rates(catalog, policies)
            assert any(s.target_share and not rates[i].any() for i, s in enumerate(catalog.sources))
            return
        assert isinstance(exc, InfeasiblePlanError | ShareError), exc
        assert not lp_feasible(catalog, policies, bounds), f"feasible catalog rejected: {exc}"
        assert any(s.name in str(exc) for s in catalog.sources) or "phase" in str(exc)
        return
    assert lp_feasible(catalog, policies, bounds)
    assert [p.tokens for p in plan.phases] == bounds
    check_plan(catalog, plan, policies)


def base_catalog():
    return Catalog(
        [
            src("crawl_high", "high", tokens=1000),
            src("crawl_mh", "medium_high", tokens=2000),
            src("crawl_med", "medium", tokens=8000, max_epochs=2),
            src("crawl_low", "low", tokens=4000, max_epochs=1),
            src("math", "high", "math", tokens=500, max_epochs=6),
            src("wiki", "high", "wiki", tokens=200, max_epochs=2),
        ]
    )


def test_phase2_drops_low_crawl_and_emphasises():
    plan = plan_blend(base_catalog(), 10_000)
    p1, p2 = plan.phases
    assert p1.weights["crawl_low"] > 0 and p2.weights["crawl_low"] == 0 and p2.weights["crawl_med"] == 0
    # math and crawl_high share a tier: equal per-token weight in phase 1, math x2 in phase 2 (if uncapped)
    assert p1.weights["math"] / 500 == pytest.approx(p1.weights["crawl_high"] / 1000)
    assert plan.source("wiki").epochs == pytest.approx(2.0)  # capped: the rest was water-filled
    assert p2.weights["math"] / 500 == pytest.approx(2 * p2.weights["crawl_high"] / 1000)


def test_pinned_reasoning_share_in_phase2():
    cat = base_catalog()
    cat.sources.append(
        src("reasoning", "high", "reasoning", tokens=300, max_epochs=20, target_share=0.2, phases=["phase2"])
    )
    plan = plan_blend(cat, 10_000, [0.6])
    assert plan.phases[0].weights["reasoning"] == 0
    assert plan.phases[1].weights["reasoning"] == pytest.approx(0.2)
    assert plan.source("reasoning").epochs == pytest.approx(0.2 * 4000 / 300)  # repeated: 2.67 epochs


def test_pinned_share_over_cap_is_infeasible():
    cat = base_catalog()
    cat.sources.append(
        src("reasoning", "high", "reasoning", tokens=100, max_epochs=2, target_share=0.2, phases=["phase2"])
    )
    with pytest.raises(InfeasiblePlanError, match=r"'reasoning' needs 800 tokens.*100 tokens x max_epochs 2"):
        plan_blend(cat, 10_000)


def test_pinned_source_in_no_phase_is_an_error():
    cat = base_catalog()
    cat.sources.append(src("web_low", "low", "crawl", target_share=0.1, phases=["phase2"]))  # phase 2 drops low crawl
    with pytest.raises(PlanError, match="pinned source 'web_low' is in no phase"):
        plan_blend(cat, 10_000)


def test_pinned_shares_summing_to_one():
    cat = Catalog([src("a", target_share=0.6), src("b", target_share=0.5), src("c")])
    with pytest.raises(ShareError, match=r"phase1.*1\.1.*a, b"):
        plan_blend(cat, 100)


def test_infeasible_names_sources_and_numbers():
    cat = Catalog([src("web", tokens=100, max_epochs=2), src("math", "high", "math", tokens=50, max_epochs=1)])
    with pytest.raises(InfeasiblePlanError, match=r"phase1 need 600 tokens.*at most 250.*web: 200, math: 50"):
        plan_blend(cat, 1000)


def test_phase2_without_high_crawl_is_infeasible():
    cat = Catalog([src("web", "low", tokens=10**6)])
    with pytest.raises(InfeasiblePlanError, match="phase2.*no eligible sources"):
        plan_blend(cat, 1000)
    plan = plan_blend(cat, 1000, [], [PhasePolicy("only")])  # one phase keeps every tier
    assert plan.phases[0].weights == {"web": 1.0}


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf")])
def test_bad_budget(budget):
    with pytest.raises(BudgetError, match="budget_tokens"):
        plan_blend(base_catalog(), budget)


@pytest.mark.parametrize("bounds", [[1.2], [0.0], [0.7, 0.3], [0.5, 0.6]])
def test_bad_boundaries(bounds):
    with pytest.raises(BudgetError):
        plan_blend(base_catalog(), 1000, bounds)


def test_bad_sources_rejected_by_planner():
    with pytest.raises(UnknownTierError, match="'x'.*'gold'"):
        plan_blend(Catalog([src("x", "gold")]), 100)
    with pytest.raises(InvalidCapError, match="'x'"):
        plan_blend(Catalog([src("x", max_epochs=0)]), 100)
    with pytest.raises(PlanError, match=r"'x' lists unknown phases \['phase3'\]"):
        plan_blend(Catalog([src("x", phases=["phase3"])]), 100)
    with pytest.raises(UnknownTierError, match="phase 'phase2'.*'top'"):
        plan_blend(base_catalog(), 100, policies=[PhasePolicy("phase1"), PhasePolicy("phase2", crawl_tiers=["top"])])


def test_natural_baseline_is_proportional_to_tokens():
    plan = plan_blend(base_catalog(), 10_000)
    total = sum(s.tokens for s in base_catalog().sources)
    for s in base_catalog().sources:
        assert plan.baselines["natural"][s.name] == pytest.approx(s.tokens / total)


def test_epoch_sweep_takes_from_lowest_crawl():
    cat = base_catalog()
    base = plan_matrix(plan_blend(cat, 10_000))
    plans = epoch_sweep(cat, 10_000, "math", [1, 2, 4, 6])
    assert [k for k, _ in plans] == [1, 2, 4, 6]
    names = [s.name for s in cat.sources]
    crawl = [i for i, s in enumerate(cat.sources) if s.category == "crawl"]
    math_i, wiki_i, low_i = names.index("math"), names.index("wiki"), names.index("crawl_low")
    for k, plan in plans:
        assert plan.source("math").epochs == pytest.approx(k) and plan.source("math").max_epochs == k
        tokens = plan_matrix(plan)
        assert np.allclose(tokens.sum(axis=0), base.sum(axis=0))  # phase sizes unchanged
        assert np.allclose(tokens[wiki_i], base[wiki_i])  # nothing but math and crawl moves
        assert np.allclose(tokens[crawl].sum(axis=0) - base[crawl].sum(axis=0), base[math_i] - tokens[math_i])
        # phase 1: crawl_low (the lowest tier) pays alone while it can
        if tokens[low_i, 0] > 0:
            others = [i for i in crawl if i != low_i]
            assert np.allclose(tokens[others, 0], base[others, 0])
    low = [plan_matrix(p)[low_i, 0] for _, p in plans]
    assert low == sorted(low, reverse=True)


def test_epoch_sweep_errors():
    with pytest.raises(PlanError, match="no unpinned source has category 'poetry'"):
        epoch_sweep(base_catalog(), 10_000, "poetry", [1, 2])
    with pytest.raises(InfeasiblePlanError, match="math=100"):
        epoch_sweep(base_catalog(), 10_000, "math", [100])


def test_planning_does_not_import_megatron():
    code = (
        "import sys; from nemo_smartpt.blend import plan_blend, Catalog, Source; "
        "plan_blend(Catalog([Source('a', ['p'], 'high', 'crawl', 2, 10, 1, [10])]), 5, [], "
        "[__import__('nemo_smartpt.blend.planner').blend.planner.PhasePolicy()]); "
        "assert not any(m.startswith('megatron') for m in sys.modules), 'megatron imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    )


def test_exactly_tight_caps_are_planned():
    # phase 2 (400 tokens) can only be filled by all of b (400 tokens x 1 epoch): b must leave phase 1 entirely
    a = src("a", tokens=1000, max_epochs=10, phases=["phase1"])
    b = src("b", tokens=400, max_epochs=1)
    plan = plan_blend(Catalog([a, b]), 1000)
    assert plan.phases[1].weights == {"a": 0.0, "b": 1.0}
    assert plan.phases[0].weights["b"] < 1e-9
    assert plan.source("b").planned_tokens == 400 and plan.source("b").epochs == pytest.approx(1.0)
