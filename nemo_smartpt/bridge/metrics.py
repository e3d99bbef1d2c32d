"""Per-step metrics a user can plot: a progress line with ETA, ``metrics.jsonl``, and tensorboard scalars.

One Bridge callback (:class:`MetricsCallback`) writes, after every optimizer step, the reduced loss dict, the
per-source and per-phase losses from the next-token step's :class:`~nemo_smartpt.bridge.ntp_step.LossBreakdown`,
anything extra sources add (RLP metrics), throughput and FLOPs, and the phase switch when the stream crosses a planned
boundary. Only the last rank writes (Bridge's own tensorboard writer lives there too), after the data-parallel
reduction, so the numbers are global. Each validation pass appends its averaged losses to ``validation.jsonl`` (one
line per evaluation: step, consumed samples, phase, ``lm_loss``, perplexity; Bridge's end-of-training validation adds a
last line at the final step) and to tensorboard as ``smartpt/val_*``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nemo_smartpt.bridge.ntp_step import LossBreakdown


class MetricsCallback:
    """Factory for the Bridge callback; call :meth:`build` (Bridge is imported lazily)."""

    def __init__(
        self,
        out_dir: str,
        breakdown: LossBreakdown | None = None,
        phase_starts: list[tuple[str, int]] | None = None,
        extra: list[Callable[[], dict[str, float]]] | None = None,
        tokens_per_sample: int | None = None,
    ):
        """Args:
        out_dir: run directory; ``metrics.jsonl`` is written there.
        breakdown: the next-token step's per-source / per-phase accumulator (reset after each step).
        phase_starts: ``[(phase_name, first_sample_index), ...]`` in order; the switch is logged when crossed.
        extra: callables returning more metrics for the step (e.g. RLP's), called on every rank.
        tokens_per_sample: sequence length, for tokens/s.
        """
        self.path = Path(out_dir) / "metrics.jsonl"
        self.validation_path = Path(out_dir) / "validation.jsonl"
        self.breakdown = breakdown
        self.phase_starts = phase_starts or []
        self.extra = extra or []
        self.tokens_per_sample = tokens_per_sample

    def phase_at(self, sample: int) -> str | None:
        name = None
        for phase, start in self.phase_starts:
            if sample >= start:
                name = phase
        return name

    def build(self):
        from megatron.bridge.training.callbacks import Callback

        outer = self

        class _Metrics(Callback):
            def on_train_start(self, context):
                outer._start(context)

            def on_train_step_end(self, context):
                outer._step(context)

            def on_eval_end(self, context):
                outer._validation(context)

        return _Metrics()

    # ------------------------------------------------------------------------------------------------ internals

    def _is_writer(self) -> bool:
        if not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1

    def _start(self, context) -> None:
        self._t0 = self._t_last = time.time()
        self._start_step = context.state.train_state.step
        self._phase = self.phase_at(context.state.train_state.consumed_train_samples)
        if self._is_writer():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _validation(self, context) -> None:
        """One line per validation pass: Bridge's averaged eval losses (on the last rank, which holds them)."""
        if not self._is_writer():
            return
        ts = context.state.train_state
        record: dict = {"step": int(ts.step), "consumed_samples": int(ts.consumed_train_samples)}
        record["phase"] = self.phase_at(max(int(ts.consumed_train_samples) - 1, 0))
        for key, value in (context.total_loss_dict or {}).items():
            value = float(value)
            record[key.replace(" ", "_")] = value
            if key == "lm loss":
                record["ppl"] = math.exp(min(value, 20.0))
        with self.validation_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = getattr(context.state, "tensorboard_logger", None)
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"smartpt/val_{key}", value, record["step"])
        if "lm_loss" in record:
            print(f"[smartpt] validation at step {record['step']}: lm loss {record['lm_loss']:.4f}", flush=True)

    def _step(self, context) -> None:
        from megatron.core import parallel_state

        ts = context.state.train_state
        now = time.time()
        # Bridge fires on_train_step_end before it advances train_state.step and consumed_train_samples: this step is
        # number ts.step + 1 and its first sample is ts.consumed_train_samples.
        step = ts.step + 1
        first_sample = ts.consumed_train_samples
        samples = int(context.state.cfg.train.global_batch_size)
        record: dict = {"step": step, "consumed_samples": first_sample + samples}
        for key, value in (context.loss_dict or {}).items():
            record[key.replace(" ", "_")] = float(value)
        if context.grad_norm is not None:
            record["grad_norm"] = float(context.grad_norm)
        if context.scheduler is not None:
            record["lr"] = float(context.scheduler.get_lr(context.optimizer.param_groups[0]))
        if self.breakdown is not None:
            if parallel_state.is_pipeline_last_stage():
                record.update(self.breakdown.reduced(parallel_state.get_data_parallel_group()))
            self.breakdown.reset()
        for source in self.extra:
            record.update({key.replace(" ", "_"): value for key, value in source().items()})
        dt = max(now - self._t_last, 1e-9)
        record["step_seconds"] = round(dt, 4)
        record["samples_per_second"] = samples / dt
        if self.tokens_per_sample:
            record["tokens_per_second"] = samples * self.tokens_per_sample / dt
        record["flops_so_far"] = float(ts.floating_point_operations_so_far)
        phase = self.phase_at(first_sample)
        record["phase"] = phase
        switched = phase != self._phase and self._phase is not None
        self._phase, self._t_last = phase, now
        if not self._is_writer():
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = getattr(context.state, "tensorboard_logger", None)
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"smartpt/{key}", value, step)
        total = context.state.cfg.train.train_iters
        done = step - self._start_step
        eta = (now - self._t0) / max(done, 1) * (total - step)
        loss = record.get("lm_loss", record.get("rlp_loss"))
        loss_text = f"loss {loss:.4f} " if isinstance(loss, float) else ""
        print(
            f"[smartpt] step {step}/{total} {loss_text}phase={phase} "
            f"{record['samples_per_second']:.1f} samples/s ETA {eta:.0f}s",
            flush=True,
        )
        if switched:
            print(f"[smartpt] phase switch -> {phase} at step {step} (first sample {first_sample})")
