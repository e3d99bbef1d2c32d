"""The planner's entropy program: Hall's existence check and the water-filling solve (numpy only).

:func:`check_hall` proves a blend exists (or names the phases and sources that cannot be filled);
:func:`water_fill` then finds the unique optimum ``T = lambda[p] * alpha[s] * rates * tokens`` described in
:mod:`nemo_smartpt.blend.planner`.
"""

from __future__ import annotations

import itertools

import numpy as np

from nemo_smartpt.blend.plan_errors import InfeasiblePlanError


def fmt_tokens(n: float) -> str:
    """A token count in four significant digits, as the planner's errors print them."""
    return f"{n:.4g}"


def check_hall(names: list[str], phase_names: list[str], rates: np.ndarray, caps: np.ndarray, demand: np.ndarray):
    """Raise :class:`InfeasiblePlanError` unless every set of phases can be filled by the sources eligible in it."""
    num_phases = len(phase_names)
    for size in range(1, num_phases + 1):
        for subset in itertools.combinations(range(num_phases), size):
            need = float(demand[list(subset)].sum())
            eligible = np.flatnonzero((rates[:, list(subset)] > 0).any(axis=1))
            supply = float(caps[eligible].sum())
            if need > supply * (1 + 1e-12):
                detail = ", ".join(f"{names[i]}: {fmt_tokens(caps[i])}" for i in eligible) or "no eligible sources"
                raise InfeasiblePlanError(
                    f"infeasible: phase(s) {', '.join(phase_names[j] for j in subset)} need {fmt_tokens(need)} tokens "
                    f"but their sources can supply at most {fmt_tokens(supply)} (available tokens x max_epochs: {detail}); "
                    "lower budget_tokens, raise max_epochs, add data or relax the phase policy"
                )


def water_fill(
    rates: np.ndarray, tokens: np.ndarray, caps: np.ndarray, demand: np.ndarray, max_iter: int = 200
) -> np.ndarray:
    """Solve ``T = lambda[p] * alpha[s] * rates * tokens`` with phase sums = ``demand`` and row sums <= ``caps``.

    ``alpha[s] = min(1, caps[s] / sum_p lambda[p] rates[s, p] tokens[s])`` is closed form given ``lambda``, so only the
    per-phase ``log lambda`` (a handful of numbers) is searched: Newton ascent on the concave dual of the entropy program.
    Row sums never exceed the caps; the phase sums match ``demand`` to ~1e-12.

    The line search reads the dual's directional derivative ``(demand - supply) . step``, which falls along the step
    (the dual is concave) and is accurate to the rounding of the supplies, never the dual value itself: that is a
    difference of two sums of ~budget size, and near the optimum (or where every source is capped and the value is
    linear with a slope of a few tokens) its rounding error hides the ascent, which stalled the solver on feasible
    catalogs. Catalogs whose caps exactly cover a phase have their optimum at infinity; Newton still reaches the
    tolerance.

    Returns:
        The token matrix ``T`` (sources x phases).
    """
    with np.errstate(divide="ignore"):
        log_b = np.log(rates * tokens[:, None])
        log_caps = np.log(caps)

    def evaluate(nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_t = log_b + nu[None, :]
        top = log_t.max(axis=1)
        finite = np.isfinite(top)
        log_x = np.full(len(caps), -np.inf)
        log_x[finite] = top[finite] + np.log(np.exp(log_t[finite] - top[finite, None]).sum(axis=1))
        capped = log_x > log_caps
        return np.exp(log_t - np.where(capped, log_x - log_caps, 0.0)[:, None]), capped

    nu = np.log(demand) - np.log(np.exp(log_b).sum(axis=0))  # the uncapped solution
    t, capped = evaluate(nu)
    for _ in range(max_iter):
        supply = t.sum(axis=0)
        grad = demand - supply
        if np.all(np.abs(grad) <= 1e-12 * demand):
            return t
        # Negative Hessian of the dual: diag(S) minus the coupling that capped sources add across phases.
        hess = np.diag(supply) - (t[capped].T / caps[capped]) @ t[capped]
        hess += np.eye(len(demand)) * (1e-12 * supply.max() + 1e-300)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        if not float(grad @ step) > 0:  # numerically flat: fall back to the gradient direction scaled per phase
            step = grad / np.maximum(supply, 1e-300)
        accepted = _line_search(evaluate, nu, step, demand)
        if accepted is None:
            break  # no ascent possible at machine precision
        nu, (t, capped) = accepted
    if np.all(np.abs(demand - t.sum(axis=0)) <= 1e-9 * demand):
        return t
    raise InfeasiblePlanError(
        "the blend did not converge: the catalog is at the edge of feasibility (the caps barely cover the "
        "budget); lower budget_tokens or raise max_epochs"
    )


def _line_search(evaluate, nu: np.ndarray, step: np.ndarray, demand: np.ndarray):
    """The point ``nu + s * step`` (and its evaluation) that the Newton iteration moves to, or ``None``.

    The full step when the directional derivative there is still >= 0 (up to its rounding): the concave dual then
    rose all the way. Otherwise the step is halved until the derivative is >= 0 again and the bracket ``[s, 2s]`` is
    bisected to ~1e-6 of ``s``: the last point with derivative >= 0 is kept, so every accepted move is an ascent.
    """

    def slope(s: float):
        trial = evaluate(nu + s * step)
        return float((demand - trial[0].sum(axis=0)) @ step), trial

    noise = 1e-12 * float(np.abs(step) @ demand)
    d, trial = slope(1.0)
    if d >= -noise:
        return nu + step, trial
    lo = 1.0
    while True:
        lo *= 0.5
        if np.all(nu + lo * step == nu):
            return None  # the step no longer moves nu: no ascent left at float64 precision
        d, trial = slope(lo)
        if d >= 0:
            break
    hi, best = 2.0 * lo, trial
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        d, trial = slope(mid)
        if d >= 0:
            lo, best = mid, trial
        else:
            hi = mid
    return nu + lo * step, best
