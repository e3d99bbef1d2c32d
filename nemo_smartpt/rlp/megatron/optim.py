"""The RLP phase's own optimiser settings, applied to Bridge's optimizer (no second optimizer).

The paper trains RLP at a constant learning rate of 1e-6 from a pretrained checkpoint, i.e. with a fresh optimizer.
Inside one ``pretrain()`` the next-token steps' optimizer, schedule and Adam moments would otherwise carry over into
the RLP steps (3e-3 constant in ``cpu_tiny``, a 3e-4 cosine in ``vanilla_gpt``). :class:`RLPOptimizerSettings` puts
the RLP values into the live Megatron optimizer at the start of every RLP step:

- the learning rate and weight decay of the RLP schedule, computed by megatron-core's own
  :class:`~megatron.core.optimizer_param_scheduler.OptimizerParamScheduler` counted in RLP steps (``rlp.lr``,
  ``rlp.min_lr``, ``rlp.lr_schedule``, ``rlp.lr_warmup_steps``, ``rlp.weight_decay``), written into every param group
  (decoupled-lr groups included; ``wd_mult`` kept, so norms and biases stay undecayed);
- gradient clipping (``rlp.clip_grad``) in every Megatron optimizer's config, read at ``optimizer.step()``;
- at the first RLP step only, with ``rlp.reset_optimizer_state``: the Adam moments and step counts set to zero.

Bridge's own scheduler keeps stepping (and is checkpointed) unchanged; after each RLP step it writes its next-token
value into the param groups, and the next step start writes the RLP value back. The RLP values are a pure function of
(step − RLP start step), so a resume mid-RLP restores them from the restored step and the start step kept with the RLP
state in the checkpoint; the Adam moments come back from the checkpoint as they were.
"""

from __future__ import annotations

import torch

from nemo_smartpt.rlp.config import RLPConfig

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def leaf_optimizers(optimizer) -> list:
    """The Megatron optimizers inside ``optimizer`` (a ``ChainedOptimizer`` holds several, e.g. dense and MoE)."""
    if optimizer is None:
        return []
    chained = getattr(optimizer, "chained_optimizers", None)
    if chained is not None:
        return [leaf for sub in chained for leaf in leaf_optimizers(sub)]
    return [optimizer]


def reset_adam_state(optimizer) -> int:
    """Zero the Adam moments and step counts of every inner torch optimizer; returns the number of states reset."""
    count = 0
    for leaf in leaf_optimizers(optimizer):
        inner = getattr(leaf, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            for key, value in state.items():
                if key in ADAM_MOMENTS and torch.is_tensor(value):
                    value.zero_()
                elif key == "step":
                    state[key] = value.zero_() if torch.is_tensor(value) else 0
            count += 1
        for group in inner.param_groups:
            if "step" in group:  # fused Adam kernels (Transformer Engine, apex) count steps per group
                group["step"] = 0
    return count


class RLPOptimizerSettings:
    """Writes the RLP learning rate, weight decay and clipping into Bridge's optimizer at every RLP step.

    Args:
        cfg: the RLP config (``lr``, ``min_lr``, ``lr_schedule``, ``lr_warmup_steps``, ``weight_decay``,
            ``clip_grad``, ``reset_optimizer_state``).
        rlp_steps: the number of RLP steps of the run (the decay length of a non-constant schedule).
    """

    def __init__(self, cfg: RLPConfig, rlp_steps: int):
        self.cfg = cfg
        self.rlp_steps = max(int(rlp_steps), 1)
        self._scheduler = None

    def _schedule(self, optimizer):
        if self._scheduler is None:
            from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

            c = self.cfg
            decay = max(self.rlp_steps, c.lr_warmup_steps + 1)
            # Built once, on the live optimizer (its constructor writes a first lr, overwritten below); counted in
            # RLP steps. It is never checkpointed: its state is (step − start), restored with the RLP state.
            self._scheduler = OptimizerParamScheduler(
                optimizer,
                init_lr=0.0,
                max_lr=c.lr,
                min_lr=c.min_lr,
                lr_warmup_steps=c.lr_warmup_steps,
                lr_decay_steps=decay,
                lr_decay_style=c.lr_schedule,
                start_wd=c.weight_decay,
                end_wd=c.weight_decay,
                wd_incr_steps=decay,
                wd_incr_style="constant",
                use_checkpoint_opt_param_scheduler=False,
            )
        return self._scheduler

    def lr_at(self, optimizer, rlp_step: int) -> tuple[float, float]:
        """(learning rate, weight decay) of RLP step ``rlp_step`` (0 = the first RLP step)."""
        sched = self._schedule(optimizer)
        sched.num_steps = rlp_step
        # An empty group: the RLP values, not the next-token max_lr/min_lr each Megatron param group carries.
        return float(sched.get_lr({})), float(sched.get_wd({}))

    def apply(self, optimizer, rlp_step: int, first: bool) -> float:
        """Put the RLP settings of ``rlp_step`` into ``optimizer``; reset Adam at the first RLP step if asked.

        Returns the learning rate now in force.
        """
        if optimizer is None:
            return float("nan")
        if first and self.cfg.reset_optimizer_state:
            reset_adam_state(optimizer)
        lr, wd = self.lr_at(optimizer, rlp_step)
        for group in optimizer.param_groups:
            if isinstance(group.get("lr"), torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            group["weight_decay"] = wd * group.get("wd_mult", 1.0)
        for leaf in [optimizer, *leaf_optimizers(optimizer)]:
            config = getattr(leaf, "config", None)
            if config is not None and hasattr(config, "clip_grad"):
                config.clip_grad = self.cfg.clip_grad
        return lr
