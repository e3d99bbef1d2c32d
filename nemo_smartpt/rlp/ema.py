"""EMA of weights for the RLP baseline scorer φ (arXiv 2510.01265: φ ← τ·φ + (1−τ)·θ after every optimizer step).

Pure torch over whatever list of tensors it is given. Under tensor/pipeline parallelism each rank passes its own
shards, so the shadow copy stays rank-local and no communication is needed (the update is elementwise). Shadows are
fp32 (a bf16 shadow would lose updates: with τ = 0.999 the increment (1−τ)·(θ−φ) falls below bf16's resolution).

Lifecycle::

    ema = ParamEMA(decay=0.999)
    with ema.swapped_in(params):   # first use copies φ = θ; live params hold φ inside, restored bit-exactly after
        s_ema = baseline_forward()
    ...optimizer.step()...
    ema.update(params)             # φ ← τ·φ + (1−τ)·θ (first call on a fresh EMA only copies)

Checkpoint with :meth:`ParamEMA.state_dict` / :meth:`ParamEMA.load_state_dict` (shadows, decay, update count).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class EMAStateError(RuntimeError):
    """The EMA's shadows do not match the parameters (or checkpoint) given to it."""


class ParamEMA:
    """Exponential moving average of a fixed list of parameter tensors, kept as fp32 shadows.

    Args:
        decay: τ in [0, 1).
    """

    def __init__(self, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: list[torch.Tensor] | None = None
        self.num_updates = 0
        """Number of decayed updates applied (the initial copy does not count)."""

    @property
    def initialized(self) -> bool:
        return self.shadow is not None

    @torch.no_grad()
    def initialize(self, params: Sequence[torch.Tensor]) -> None:
        """Set φ = θ (fp32 copies). The paper initialises φ to θ at the first step."""
        self.shadow = [p.detach().to(dtype=torch.float32, copy=True) for p in params]
        self.num_updates = 0

    def _check(self, params: Sequence[torch.Tensor]) -> None:
        if len(params) != len(self.shadow):
            raise EMAStateError(f"EMA holds {len(self.shadow)} tensors, got {len(params)} parameters")
        for i, (p, s) in enumerate(zip(params, self.shadow)):
            if p.shape != s.shape:
                raise EMAStateError(f"parameter {i}: shape {tuple(p.shape)} != EMA shadow {tuple(s.shape)}")

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        """φ ← τ·φ + (1−τ)·θ with fused foreach ops; on a fresh EMA, initialise instead (φ = θ)."""
        params = list(params)
        if self.shadow is None:
            self.initialize(params)
            return
        self._check(params)
        # .to() returns the parameter itself when it is already fp32 on the shadow's device; bf16 gets a temporary.
        live = [p.detach().to(device=s.device, dtype=torch.float32) for p, s in zip(params, self.shadow)]
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, live, alpha=1.0 - self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_in(self, params: Sequence[torch.Tensor]) -> Iterator[None]:
        """Load φ into the live parameters for a forward without gradient; restore θ bit-exactly on exit.

        The live values are backed up by exact copies (same dtype), so restoring is a plain copy and exceptions
        inside the block still restore. φ is cast to each parameter's dtype for the forward (the bf16 model scores
        with bf16 EMA weights). Gradient recording is disabled inside the block.
        """
        params = list(params)
        if self.shadow is None:
            self.initialize(params)
        self._check(params)
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            with torch.no_grad():
                yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        """Shadows (rank-local), decay and update count."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": None if self.shadow is None else [s.clone() for s in self.shadow],
        }

    def load_state_dict(self, state: dict, params: Sequence[torch.Tensor] | None = None) -> None:
        """Restore from :meth:`state_dict`; with ``params``, also check shapes and move shadows to their devices."""
        missing = {"decay", "num_updates", "shadow"} - set(state)
        if missing:
            raise EMAStateError(f"EMA state_dict lacks {sorted(missing)}")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        shadow = state["shadow"]
        self.shadow = None if shadow is None else [s.detach().to(torch.float32).clone() for s in shadow]
        if params is not None and self.shadow is not None:
            params = list(params)
            self._check(params)
            self.shadow = [s.to(p.device) for s, p in zip(self.shadow, params)]
