"""Quality- and epoch-aware multi-phase blend planner (pure logic: numpy and the standard library only).

Mental model (Feng, Prabhumoye et al., arXiv 2412.15285). The run's token budget is cut into phases (default 60% / 40%).
In each phase every source ``s`` gets a *rate* ``r[s, p]``: its tier's weight, times the phase's emphasis multiplier
if its category is an emphasis category, or zero if the phase excludes it (a crawl tier the phase does not keep, or a
phase the source is not listed in). The planned tokens are

    T[s, p] = lambda[p] * alpha[s] * r[s, p] * tokens[s]

``lambda[p]`` scales phase ``p`` so that its tokens add up to the phase budget. ``alpha[s] <= 1`` is below 1 only for a
source that would exceed its cap ``max_epochs * tokens`` summed over the run; it scales that source down by the same
factor in every phase, and the weight it cannot take goes to all other sources by the same rules (water-filling).
Uncapped sources of the same tier therefore get the same per-token weight, and a higher tier never weighs less than a
lower one (within the same emphasis status). This is the optimum of an entropy program; given ``lambda`` every ``alpha``
is closed form, so only one number per phase is searched (Newton on the concave dual). Existence is checked first with
Hall's condition (every set of phases must be fillable by the caps of the sources eligible in it), so an infeasible
catalog fails with :class:`InfeasiblePlanError` naming the sources and the numbers.

Choices where the paper is silent (all configurable through :class:`PhasePolicy` and the catalog):
- phase 1 reads every tier with emphasis multiplier 1 (diversity);
- phase 2 keeps the ``high`` and ``medium_high`` crawl tiers (Nemotron-CC's 15T run kept only ``high``: set
  ``crawl_tiers=[high]`` to reproduce) and doubles the per-token weight of the emphasis categories;
- non-crawl sources keep their tier in every phase: the tier filter only applies to ``crawl_categories``.

Pinned sources (``target_share``, used to inject reasoning data, arXiv 2510.03264) take exactly their share of every phase
they are in, repeated up to their cap; the rest of each phase is planned as above.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nemo_smartpt.blend.catalog import Catalog, CatalogError, UnknownTierError


class PlanError(ValueError):
    """A plan request that cannot be satisfied or does not make sense."""


class InfeasiblePlanError(PlanError):
    """No blend meets the budget without drawing some source past ``max_epochs``."""


class BudgetError(PlanError):
    """A budget or phase boundary that is not usable (budget <= 0, boundaries out of order, empty phase)."""


class ShareError(PlanError):
    """Pinned shares that do not fit in a phase (they must leave room for the other sources)."""


@dataclass
class PhasePolicy:
    """How one phase turns tiers and categories into per-token rates."""

    name: str = "phase1"
    """Phase name, used in ``Source.phases`` and in the plan."""
    crawl_tiers: list[str] | None = None
    """Tiers of the ``crawl_categories`` this phase keeps; ``None`` keeps every tier."""
    crawl_categories: list[str] = field(default_factory=lambda: ["crawl"])
    """Categories the ``crawl_tiers`` filter applies to."""
    emphasis_multiplier: float = 1.0
    """Per-token weight multiplier for the catalog's ``emphasis_categories`` in this phase."""
    tier_weights: dict[str, float] = field(default_factory=dict)
    """Per-tier weights overriding the catalog's ``tiers`` in this phase; empty means the catalog's."""


def default_phase_policies() -> list[PhasePolicy]:
    """Diversity first, quality second: the paper's order (swapping it did worse)."""
    return [
        PhasePolicy(name="phase1"),
        PhasePolicy(name="phase2", crawl_tiers=["high", "medium_high"], emphasis_multiplier=2.0),
    ]


@dataclass
class SourcePlan:
    """What the plan draws from one source over the whole run."""

    name: str
    prefixes: list[str]
    prefix_tokens: list[int]
    tokens: int
    documents: int
    quality: str
    category: str
    max_epochs: float
    planned_tokens: int
    epochs: float
    target_share: float | None = None


@dataclass
class PhasePlan:
    """One phase: a token range of the run and its blend weights (source name -> share, summing to 1)."""

    name: str
    start_token: int
    end_token: int
    weights: dict[str, float]

    @property
    def tokens(self) -> int:
        return self.end_token - self.start_token


@dataclass
class Plan:
    """A multi-phase blend plan plus its baselines; serialise with :meth:`to_dict` / ``plan_io.load_plan``."""

    budget_tokens: int
    seed: int
    sources: list[SourcePlan]
    phases: list[PhasePlan]
    baselines: dict[str, dict[str, float]]
    split: str | None = None
    """megatron-core split string whose train range the source token counts (and so the caps) cover."""
    seq_length: int = 0
    """Sequence length the caps reserve sample rounding for (0: none reserved)."""
    global_batch_size: int = 0
    """Global batch size the caps reserve phase-boundary rounding for (0: none reserved)."""

    def source(self, name: str) -> SourcePlan:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The ``plan.json`` structure, including the per-phase Megatron-LM and Megatron-Bridge exports."""
        # plan_io owns the export formats and imports this module, hence the local import.
        from nemo_smartpt.blend.plan_io import plan_to_dict

        return plan_to_dict(self)


def phase_bounds(budget_tokens: int, boundaries: list[float], num_phases: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of each phase from fractional boundaries, e.g. ``[0.6]`` -> two phases."""
    if len(boundaries) != num_phases - 1:
        raise BudgetError(
            f"{len(boundaries)} phase boundaries need {len(boundaries) + 1} phase policies, got {num_phases}"
        )
    fracs = [0.0, *(float(b) for b in boundaries), 1.0]
    if any(not b0 < b1 for b0, b1 in itertools.pairwise(fracs)):
        raise BudgetError(f"phase boundaries must be strictly increasing inside (0, 1), got {list(boundaries)}")
    edges = [round(f * budget_tokens) for f in fracs]
    if any(e0 >= e1 for e0, e1 in itertools.pairwise(edges)):
        raise BudgetError(f"budget {budget_tokens} tokens leaves an empty phase with boundaries {list(boundaries)}")
    return list(itertools.pairwise(edges))


def check_budget(budget_tokens: float) -> int:
    if not (isinstance(budget_tokens, int | float) and math.isfinite(budget_tokens)) or budget_tokens < 1:
        raise BudgetError(f"budget_tokens must be a positive number of tokens, got {budget_tokens!r}")
    return int(round(budget_tokens))


def source_rates(catalog: Catalog, policies: list[PhasePolicy]) -> np.ndarray:
    """Per-token rate ``r[s, p]`` of every source in every phase (0 = excluded); pinned sources included."""
    names = [p.name for p in policies]
    for pol in policies:
        for tier in [*(pol.crawl_tiers or []), *pol.tier_weights]:
            if tier not in catalog.tiers:
                raise UnknownTierError(
                    f"phase {pol.name!r} names unknown tier {tier!r} (known: {', '.join(catalog.tiers)})"
                )
        for tier, w in pol.tier_weights.items():
            if not w > 0:
                raise CatalogError(f"phase {pol.name!r}: tier weight {tier}={w!r} must be > 0")
    rates = np.zeros((len(catalog.sources), len(policies)))
    for i, src in enumerate(catalog.sources):
        unknown = sorted(set(src.phases or []) - set(names))
        if unknown:
            raise PlanError(f"source {src.name!r} lists unknown phases {unknown} (phases: {', '.join(names)})")
        for j, pol in enumerate(policies):
            if src.phases is not None and pol.name not in src.phases:
                continue
            if (
                pol.crawl_tiers is not None
                and src.category in pol.crawl_categories
                and src.quality not in pol.crawl_tiers
            ):
                continue
            rate = pol.tier_weights.get(src.quality, catalog.tiers[src.quality])
            if src.category in catalog.emphasis_categories:
                rate *= pol.emphasis_multiplier
            rates[i, j] = rate
    return rates


def _fmt(n: float) -> str:
    return f"{n:.4g}"


def _check_hall(names: list[str], phase_names: list[str], rates: np.ndarray, caps: np.ndarray, demand: np.ndarray):
    """Raise :class:`InfeasiblePlanError` unless every set of phases can be filled by the sources eligible in it."""
    num_phases = len(phase_names)
    for size in range(1, num_phases + 1):
        for subset in itertools.combinations(range(num_phases), size):
            need = float(demand[list(subset)].sum())
            eligible = np.flatnonzero((rates[:, list(subset)] > 0).any(axis=1))
            supply = float(caps[eligible].sum())
            if need > supply * (1 + 1e-12):
                detail = ", ".join(f"{names[i]}: {_fmt(caps[i])}" for i in eligible) or "no eligible sources"
                raise InfeasiblePlanError(
                    f"infeasible: phase(s) {', '.join(phase_names[j] for j in subset)} need {_fmt(need)} tokens "
                    f"but their sources can supply at most {_fmt(supply)} (available tokens x max_epochs: {detail}); "
                    "lower budget_tokens, raise max_epochs, add data or relax the phase policy"
                )


def water_fill(
    rates: np.ndarray, tokens: np.ndarray, caps: np.ndarray, demand: np.ndarray, max_iter: int = 200
) -> np.ndarray:
    """Solve ``T = lambda[p] * alpha[s] * rates * tokens`` with phase sums = ``demand`` and row sums <= ``caps``.

    ``alpha[s] = min(1, caps[s] / sum_p lambda[p] rates[s, p] tokens[s])`` is closed form given ``lambda``, so only the
    per-phase ``log lambda`` (a handful of numbers) is searched: Newton ascent on the concave dual of the entropy program,
    with a backtracking line search. Row sums never exceed the caps; the phase sums match ``demand`` to ~1e-12.
    Catalogs whose caps exactly cover a phase have their optimum at infinity; Newton still reaches the tolerance.

    Returns:
        The token matrix ``T`` (sources x phases).
    """
    with np.errstate(divide="ignore"):
        log_b = np.log(rates * tokens[:, None])
        log_caps = np.log(caps)

    def evaluate(nu: np.ndarray):
        log_t = log_b + nu[None, :]
        top = log_t.max(axis=1)
        finite = np.isfinite(top)
        log_x = np.full(len(caps), -np.inf)
        log_x[finite] = top[finite] + np.log(np.exp(log_t[finite] - top[finite, None]).sum(axis=1))
        capped = log_x > log_caps
        t = np.exp(log_t - np.where(capped, log_x - log_caps, 0.0)[:, None])
        h = np.where(capped, caps * (1.0 + log_x - log_caps), np.exp(log_x))
        return float(nu @ demand - h.sum()), t, capped

    nu = np.log(demand) - np.log(np.exp(log_b).sum(axis=0))  # the uncapped solution
    value, t, capped = evaluate(nu)
    for _ in range(max_iter):
        supply = t.sum(axis=0)
        grad = demand - supply
        if np.all(np.abs(grad) <= 1e-12 * demand):
            return t
        # Negative Hessian of the dual: diag(S) minus the coupling that capped sources add across phases.
        hess = np.diag(supply) - (t[capped].T / caps[capped]) @ t[capped]
        hess += np.eye(len(demand)) * (1e-12 * supply.max() + 1e-300)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        slope = float(grad @ step)
        if not slope > 0:  # numerically flat: fall back to the gradient direction scaled per phase
            step, slope = grad / np.maximum(supply, 1e-300), float(grad @ (grad / np.maximum(supply, 1e-300)))
        scale = 1.0
        for _ in range(80):
            trial_value, trial_t, trial_capped = evaluate(nu + scale * step)
            trial_residual = np.abs(demand - trial_t.sum(axis=0)).max()
            # Armijo on the dual value; near the optimum the value is flat to rounding, then a smaller residual counts
            flat = abs(trial_value - value) <= 1e-12 * max(abs(value), 1.0)
            if trial_value >= value + 1e-4 * scale * slope or (flat and trial_residual < np.abs(grad).max()):
                break
            scale *= 0.5
        else:
            break  # no ascent possible at machine precision
        nu, value, t, capped = nu + scale * step, trial_value, trial_t, trial_capped
    if np.all(np.abs(demand - t.sum(axis=0)) <= 1e-9 * demand):
        return t
    raise InfeasiblePlanError(
        "the blend did not converge: the catalog is at the edge of feasibility (the caps barely cover the "
        "budget); lower budget_tokens or raise max_epochs"
    )


def plan_blend(
    catalog: Catalog,
    budget_tokens: float,
    phase_boundaries: list[float] | None = None,
    policies: list[PhasePolicy] | None = None,
    seed: int = 1234,
    seq_length: int = 0,
    global_batch_size: int = 0,
) -> Plan:
    """Plan a multi-phase blend that respects every source's epoch cap.

    A cap holds on what the dataset reads only if the plan leaves room for the dataset's roundings: every epoch of a
    prefix yields ``(tokens - 1) // seq_length`` whole samples (the tail is never read), megatron-core's greedy blend
    may give a source one sample more than its share per phase, and phase ends move to global-batch boundaries. With
    ``seq_length`` (and ``global_batch_size``) given, each source's cap is lowered by
    ``seq_length * (prefixes * ceil(max_epochs) + phases * (global_batch_size + 2))`` tokens, which bounds all three.

    Args:
        catalog: sources with token counts already read (see :func:`~nemo_smartpt.blend.catalog.load_catalog`).
        budget_tokens: tokens of the whole run.
        phase_boundaries: fractions of the budget where a new phase starts; default ``[0.6]``.
        policies: one :class:`PhasePolicy` per phase; default :func:`default_phase_policies`.
        seed: carried into the plan for the dataset that serves it (the planner itself is deterministic).
        seq_length: the training sequence length (0: reserve nothing for rounding).
        global_batch_size: the training global batch size (0: reserve nothing for phase-boundary rounding).

    Raises:
        CatalogError: bad catalog (unknown tier, cap <= 0, empty source, ...).
        BudgetError, ShareError, InfeasiblePlanError: the request cannot be planned.
    """
    budget = check_budget(budget_tokens)
    catalog.validate()
    policies = default_phase_policies() if policies is None else list(policies)
    phase_names = [p.name for p in policies]
    if len(set(phase_names)) != len(phase_names):
        raise PlanError(f"phase names must be unique, got {phase_names}")
    bounds = phase_bounds(budget, [0.6] if phase_boundaries is None else list(phase_boundaries), len(policies))
    phase_tokens = np.array([float(e - s) for s, e in bounds])
    for name, (start, end) in zip(phase_names, bounds):
        if seq_length > 0 and end - start < seq_length:
            raise BudgetError(
                f"phase {name!r} holds {end - start} tokens, fewer than one sample of seq_length {seq_length}; "
                f"raise budget_tokens or move phase_boundaries"
            )
    rates = source_rates(catalog, policies)
    names = [s.name for s in catalog.sources]
    avail = np.array([float(s.tokens) for s in catalog.sources])
    caps = np.array([s.cap_tokens for s in catalog.sources], dtype=float)
    if seq_length > 0:
        reserve = [
            seq_length * (max(len(s.prefixes), 1) * math.ceil(s.max_epochs) + len(policies) * (global_batch_size + 2))
            for s in catalog.sources
        ]
        caps = np.maximum(caps - np.array(reserve, dtype=float), 0.0)

    pinned = np.array([s.target_share is not None for s in catalog.sources])
    planned = np.zeros_like(rates)
    for i in np.flatnonzero(pinned):
        src = catalog.sources[i]
        if not np.any(rates[i] > 0):
            raise PlanError(f"pinned source {src.name!r} is in no phase (its phases or the tier filters exclude it)")
        planned[i] = np.where(rates[i] > 0, src.target_share * phase_tokens, 0.0)
        if planned[i].sum() > caps[i] * (1 + 1e-12):
            raise InfeasiblePlanError(
                f"infeasible: pinned source {src.name!r} needs {_fmt(planned[i].sum())} tokens for target_share "
                f"{src.target_share} but has {src.tokens} tokens x max_epochs {src.max_epochs} = {_fmt(caps[i])}"
            )
    for j, pol in enumerate(policies):
        share = sum(catalog.sources[i].target_share for i in np.flatnonzero(pinned & (rates[:, j] > 0)))
        if share >= 1.0 - 1e-12:
            who = ", ".join(names[i] for i in np.flatnonzero(pinned & (rates[:, j] > 0)))
            raise ShareError(f"pinned target_share in phase {pol.name!r} sums to {share:.4g} >= 1 ({who})")

    free = ~pinned
    demand = phase_tokens - planned.sum(axis=0)
    free_rates = np.where(free[:, None], rates, 0.0)
    _check_hall(names, phase_names, free_rates, np.where(free, caps, 0.0), demand)
    planned[free] = water_fill(free_rates[free], avail[free], caps[free], demand)
    plan = assemble_plan(catalog, budget, bounds, phase_names, planned, seed)
    plan.split, plan.seq_length, plan.global_batch_size = catalog.split, int(seq_length), int(global_batch_size)
    return plan


def assemble_plan(
    catalog: Catalog,
    budget: int,
    bounds: list[tuple[int, int]],
    phase_names: list[str],
    planned: np.ndarray,
    seed: int,
) -> Plan:
    """Turn a token matrix (sources x phases) into a :class:`Plan` with its two baselines."""
    phase_tokens = np.array([float(e - s) for s, e in bounds])
    weights = planned / planned.sum(axis=0, keepdims=True)
    phases = [
        PhasePlan(name, start, end, {s.name: float(weights[i, j]) for i, s in enumerate(catalog.sources)})
        for j, (name, (start, end)) in enumerate(zip(phase_names, bounds))
    ]
    totals = (weights * phase_tokens).sum(axis=1)
    sources = []
    for i, s in enumerate(catalog.sources):
        tokens_drawn = min(int(round(totals[i])), int(math.floor(s.cap_tokens)))
        sources.append(
            SourcePlan(
                name=s.name,
                prefixes=list(s.prefixes),
                prefix_tokens=list(s.prefix_tokens) or [s.tokens],
                tokens=s.tokens,
                documents=s.documents,
                quality=s.quality,
                category=s.category,
                max_epochs=s.max_epochs,
                planned_tokens=tokens_drawn,
                epochs=float(totals[i] / s.tokens),
                target_share=s.target_share,
            )
        )
    avail = np.array([float(s.tokens) for s in catalog.sources])
    baselines = {
        "natural": {s.name: float(avail[i] / avail.sum()) for i, s in enumerate(catalog.sources)},
        "random_order": {s.name: float(totals[i] / totals.sum()) for i, s in enumerate(catalog.sources)},
    }
    return Plan(budget_tokens=budget, seed=seed, sources=sources, phases=phases, baselines=baselines)


def plan_matrix(plan: Plan) -> np.ndarray:
    """Planned tokens as a (sources x phases) matrix, in the plan's source order."""
    return np.array([[ph.weights[s.name] * ph.tokens for ph in plan.phases] for s in plan.sources])
