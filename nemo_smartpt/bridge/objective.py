"""The training objective of a ``smartpt train`` run: next-token steps, then RLP steps, in one ``pretrain()``.

:class:`SwitchingForwardStep` is the forward step Bridge calls. It reads ``state.train_state.step`` (optimizer steps
done so far) and runs the next-token step until ``switch_at``, the RLP step after it — the paper's "continued
pretraining with RLP" inside one run, so checkpoints, data stream and logs stay one. Evaluation always uses the
next-token step (``model.training`` is False there), which keeps validation loss comparable across arms.
"""

from __future__ import annotations

from nemo_smartpt.bridge.metrics import MetricsCallback
from nemo_smartpt.bridge.ntp_step import LossBreakdown, make_ntp_forward_step


class SwitchingForwardStep:
    """Next-token forward step before ``switch_at`` optimizer steps, ``rlp_step`` from then on."""

    def __init__(self, ntp_step, rlp_step=None, switch_at: int | None = None):
        self.ntp_step = ntp_step
        self.rlp_step = rlp_step
        self.switch_at = switch_at

    def uses_rlp(self, state, model) -> bool:
        if self.rlp_step is None or self.switch_at is None:
            return False
        return model.training and state.train_state.step >= self.switch_at

    def __call__(self, state, data_iterator, model, return_schedule_plan: bool = False):
        step = self.rlp_step if self.uses_rlp(state, model) else self.ntp_step
        return step(state, data_iterator, model)


def phase_starts_of(plan: dict, arm: str, seq_length: int, global_batch_size: int) -> list[tuple[str, int]]:
    """``[(phase name, first sample)]`` of the train stream, with the phased dataset's own boundary rounding."""
    from nemo_smartpt.blend.phased_spec import phase_end_samples, phases_from_plan

    if arm != "planned":
        return [(arm, 0)]
    phases = phases_from_plan(plan)
    ends = phase_end_samples(phases, seq_length, global_batch_size)
    return [(phase.name, start) for phase, start in zip(phases, [0, *ends[:-1]])]


def build_objective(run):
    """Forward step and callbacks for a run (:class:`~nemo_smartpt.bridge.api.SmartPT`)."""
    from nemo_smartpt.blend.plan_io import read_plan_json
    from nemo_smartpt.bridge.evaluate import eval_callback

    plan = read_plan_json(run.plan_path)
    arm = run.cfg.data.arm
    starts = phase_starts_of(plan, arm, run.seq_length, run.global_batch_size)
    breakdown = LossBreakdown([s["name"] for s in plan["sources"]], [name for name, _ in starts])
    forward = SwitchingForwardStep(make_ntp_forward_step(breakdown))
    callbacks = []
    extra = []
    if run.schedule["rlp_steps"]:
        from nemo_smartpt.rlp.megatron.callbacks import build_rlp_training
        from nemo_smartpt.rlp.prompt import layout_from_tokenizer

        tokenizer = run.tokenizer
        layout = layout_from_tokenizer(
            run.cfg.rlp, lambda text: tokenizer.encode_batch([text])[0], pad_id=tokenizer.eod
        )
        switch_at = run.schedule["ntp_steps"]
        # The RLP callback acts from switch_at on: EMA, optimiser settings, dropout off, metrics, EMA checkpoints.
        rlp_step, rlp_callbacks = build_rlp_training(
            run.cfg.rlp, layout, eod_id=tokenizer.eod, run_dir=None, start_step=switch_at
        )
        forward.rlp_step, forward.switch_at = rlp_step, switch_at
        rlp_run = rlp_callbacks[0].run
        rlp_run.eval_uses_rlp = False  # SwitchingForwardStep validates with the next-token step
        callbacks.extend(rlp_callbacks)
        extra.append(lambda: rlp_run.last_metrics if rlp_run.last_fresh else {})
    metrics = MetricsCallback(str(run.out), breakdown, starts, extra, tokens_per_sample=run.seq_length)
    callbacks.append(metrics.build())  # last: it reads what the other callbacks computed for this step
    tasks, include_path = eval_tasks(run)
    if run.cfg.eval.enabled and tasks:
        callbacks.append(eval_callback(tasks, include_path, run.tokenizer, str(run.out), run.cfg.eval.batch_size))
    return forward, callbacks


def eval_tasks(run) -> tuple[list[str], str | None]:
    """(lm-eval task names, include path) for the end-of-training evaluation: ``eval.tasks``/``eval.include_path``
    if given, else every task in the ``tasks/`` folder beside the catalog (the world and the bundled corpus write
    one) except the ``*_dev`` ones, which are for design decisions, not for reports."""
    from nemo_smartpt.evaluation.harness import catalog_task_dir, local_task_names

    include = run.cfg.eval.include_path or catalog_task_dir(run.cfg.data.catalog, run.cfg.data.bundled_dir)
    if run.cfg.eval.tasks:
        return list(run.cfg.eval.tasks), include or None
    if not include:
        return [], None
    return sorted(t for t in local_task_names(include) if not t.endswith("_dev")), include
