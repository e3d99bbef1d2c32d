"""``SMARTPT_MAX_STEPS=N``: run any ``smartpt train`` command as written, but at most N optimizer steps.

For smoke tests and the README test (``tests/docs``): a documented command such as ``smartpt train +experiment=hopper
train.train_iters=200 schedule.rlp_steps=20`` is run unchanged, and the environment caps ``train.train_iters`` at N.
The RLP part keeps its share of the steps (at least one RLP step and one next-token step when the command has both),
so the capped run still crosses the same objective switch. The cap is printed; it applies after every override, like
a last override the user did not have to type. Unset or empty: no cap.
"""

from __future__ import annotations

import math
import os

from nemo_smartpt.overrides import OverrideError

ENV = "SMARTPT_MAX_STEPS"


class StepCapError(OverrideError):
    """``SMARTPT_MAX_STEPS`` is not a positive integer (one line from the CLI, like a bad override)."""


def step_cap() -> int | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap < 1:
        raise StepCapError(f"{ENV}={raw!r}: set a positive number of steps, or unset it")
    return cap


def capped_steps(total: int, rlp_steps: int, cap: int) -> tuple[int, int]:
    """``(train_iters, rlp_steps)`` under the cap: RLP keeps its share, rounded up, and both objectives stay present."""
    if total <= cap:
        return total, rlp_steps
    if rlp_steps <= 0:
        return cap, 0
    if rlp_steps >= total:
        return cap, cap
    rlp = min(max(math.ceil(rlp_steps * cap / total), 1), cap - 1) if cap > 1 else 1
    return cap, rlp


def apply_step_cap(cfg, bridge) -> None:
    """Cap ``bridge.train.train_iters`` and ``cfg.schedule.rlp_steps`` in place when ``SMARTPT_MAX_STEPS`` is set."""
    cap = step_cap()
    if cap is None:
        return
    total, rlp = int(bridge.train.train_iters), int(cfg.schedule.rlp_steps)
    new_total, new_rlp = capped_steps(total, rlp, cap)
    if (new_total, new_rlp) != (total, rlp):
        print(
            f"[smartpt] {ENV}={cap}: train.train_iters {total} -> {new_total}, schedule.rlp_steps {rlp} -> {new_rlp}",
            flush=True,
        )
    bridge.train.train_iters, cfg.schedule.rlp_steps = new_total, new_rlp
