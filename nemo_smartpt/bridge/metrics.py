"""Per-step metrics a user can plot: a progress line, ``metrics.jsonl``/``validation.jsonl``, and Bridge's loggers.

One Bridge callback (:class:`MetricsCallback`) writes, after every optimizer step, the reduced loss dict, the
per-source and per-phase losses from the next-token step's :class:`~nemo_smartpt.bridge.ntp_step.LossBreakdown`,
anything extra sources add (RLP metrics), throughput and FLOPs, and the phase switch when the stream crosses a planned
boundary. Only the last rank writes (Bridge's own writers live there too), after the data-parallel reduction, so the
numbers are global.

Metrics once, everywhere: Bridge already sends ``lm loss``, learning rate, grad norm, batch size and validation loss to
every logger configured in ``config.logger`` (TensorBoard, W&B, MLflow, Comet). Everything else of ours goes through
:func:`log_scalars` to those same writer objects (``state.tensorboard_logger``, ``state.wandb_logger``,
``state.mlflow_logger``, ``state.comet_logger``), one name per metric (:func:`metric_tag`: no spaces, no
parentheses). The RLP step returns its metrics in the loss dict (that is how Megatron reduces them over micro-batches
and data-parallel ranks); the RLP callback logs them once under ``rlp/...`` and takes them out of the loss dict
(:func:`take_logged_keys`) before Bridge's ``training_log`` would log each again, with a "vs samples" twin.

Resume: Bridge restarts from the last checkpoint, so steps after it run again. On train start the writer drops the
records of those steps from ``metrics.jsonl`` and ``validation.jsonl`` (atomically), so each step is recorded once.

Console: one line per step with the loss (next-token) or the RLP loss and reward (RLP steps), the phase, a smoothed
rate (:class:`RateMeter`, an EMA of samples/s and tokens/s) and the ETA from it. See
:mod:`nemo_smartpt.bridge.console` for Bridge's CPU-only noise.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nemo_smartpt.bridge.ntp_step import LossBreakdown

# Keys of the step record that Bridge's training_log already sends to every logger under its own names.
BRIDGE_LOGGED = frozenset({"lm_loss", "lr", "grad_norm"})
# Keys of the step record that are bookkeeping, not scalars to plot against the step.
NOT_PLOTTED = frozenset({"step", "consumed_samples", "phase"})
RATE_EMA = 0.3  # weight of the newest step in the smoothed rate: follows an NTP->RLP change within ~5 steps


def metric_tag(key: str) -> str:
    """The one logger name of a metric: ``rlp reward mean`` -> ``rlp/reward_mean``, ``rlp generation tokens/s`` ->
    ``rlp/generation_tokens_per_s``, ``loss/source/web`` stays, ``samples_per_second`` -> ``smartpt/samples_per_second``.
    Names carry no spaces or parentheses (W&B panels, MLflow keys and TensorBoard regexes all take them plainly)."""
    if key.startswith("rlp ") or key.startswith("rlp_"):
        return "rlp/" + _clean(key[4:].replace("/", "_per_"))
    if "/" in key and " " not in key:
        return "/".join(_clean(part) for part in key.split("/"))
    return "smartpt/" + _clean(key.replace("/", "_per_"))


def record_key(key: str) -> str:
    """The ``metrics.jsonl`` key of a metric: the tag's last part with its group (``rlp_reward_mean``)."""
    if key.startswith("rlp "):
        return "rlp_" + _clean(key[4:].replace("/", "_per_"))
    if "/" in key and " " not in key:
        return "/".join(_clean(part) for part in key.split("/"))
    return _clean(key.replace("/", "_per_"))


def _clean(text: str) -> str:
    text = re.sub(r"[()\[\]]", "", text.strip())
    text = re.sub(r"[\s\-]+", "_", text)
    return re.sub(r"_+", "_", text).strip("_")


def log_scalars(state, metrics: dict[str, float], step: int) -> None:
    """Send ``{tag: value}`` to every logger Bridge set up from ``config.logger`` (each receives each tag once).

    Bridge creates the writers on the last rank only, so this is a no-op elsewhere. Non-finite values are dropped
    (a NaN in W&B or MLflow breaks its plots; metrics.jsonl keeps them)."""
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if not scalars:
        return
    writer = getattr(state, "tensorboard_logger", None)
    if writer is not None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
    wandb = getattr(state, "wandb_logger", None)
    if wandb is not None:
        wandb.log(scalars, step)
    mlflow = getattr(state, "mlflow_logger", None)
    if mlflow is not None:
        # MLflow keys allow only [A-Za-z0-9_-. /]; our tags already fit, Bridge's sanitiser is not public API.
        mlflow.log_metrics(scalars, step=step)
    comet = getattr(state, "comet_logger", None)
    if comet is not None:
        comet.log_metrics(scalars, step=step)


def take_logged_keys(loss_dict: dict | None, prefix: str = "rlp ") -> None:
    """Remove the entries a callback has logged itself, so Bridge's ``training_log`` (which runs after
    ``on_train_step_end`` on the same dict) does not log them again under their spaced names."""
    if loss_dict:
        for key in [k for k in loss_dict if k.startswith(prefix)]:
            del loss_dict[key]


def trim_jsonl(path: Path, last_step: int) -> int:
    """Drop records whose ``step`` is after ``last_step`` (they will be recorded again); returns how many.

    Rewritten through a temporary file and ``os.replace``: an interruption leaves the old file or the new one."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            step = int(json.loads(line).get("step", 0))
        except (ValueError, TypeError, AttributeError):
            kept.append(line)  # not ours to judge: keep what we cannot read
            continue
        if step > last_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


class RateMeter:
    """Exponentially smoothed samples/s: the first step (setup, compilation) and NTP/RLP switches do not dominate."""

    def __init__(self, weight: float = RATE_EMA):
        self.weight = weight
        self.value: float | None = None

    def update(self, samples: int, seconds: float) -> float:
        rate = samples / max(seconds, 1e-9)
        self.value = rate if self.value is None else self.weight * rate + (1 - self.weight) * self.value
        return self.value


def progress_line(record: dict, total: int, batch: int, rate: float, tokens_per_sample: int | None) -> str:
    """``[smartpt] step 5/10 loss 5.1683 phase=phase2 | 812 tokens/s 6.3 samples/s (smoothed) ETA 4s``; on RLP
    steps the RLP loss and reward replace the next-token loss."""
    step = record["step"]
    if "rlp_reward_mean" in record or "rlp_loss" in record:
        parts = [f"rlp loss {record.get('rlp_loss', float('nan')):.4g}"]
        if "rlp_reward_mean" in record:
            parts.append(f"reward {record['rlp_reward_mean']:.4g}")
    elif isinstance(record.get("lm_loss"), float):
        parts = [f"loss {record['lm_loss']:.4f}"]
    else:
        parts = []
    eta = (total - step) * batch / max(rate, 1e-9)
    speed = f"{rate:.1f} samples/s"
    if tokens_per_sample:
        speed = f"{rate * tokens_per_sample:.0f} tokens/s {speed}"
    return f"[smartpt] step {step}/{total} {' '.join(parts)} phase={record.get('phase')} | {speed} ETA {eta:.0f}s"


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
        out_dir: run directory; ``metrics.jsonl`` and ``validation.jsonl`` are written there.
        breakdown: the next-token step's per-source / per-phase accumulator (reset after each step).
        phase_starts: ``[(phase_name, first_sample_index), ...]`` in order; the switch is logged when crossed.
        extra: callables returning more metrics for the step (e.g. RLP's), called on every rank; their sources log
            them to Bridge's writers themselves, here they go to ``metrics.jsonl`` and the progress line.
        tokens_per_sample: sequence length, for tokens/s.
        """
        self.path = Path(out_dir) / "metrics.jsonl"
        self.validation_path = Path(out_dir) / "validation.jsonl"
        self.breakdown = breakdown
        self.phase_starts = phase_starts or []
        self.extra = extra or []
        self.tokens_per_sample = tokens_per_sample
        self.rate = RateMeter()

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

            def on_train_step_start(self, context):
                outer._lr_in_force = _current_lr(context)

            def on_train_step_end(self, context):
                outer._step(context)

            def on_eval_end(self, context):
                outer._validation(context)

        return _Metrics()

    # ------------------------------------------------------------------------------------------------ internals

    # The learning rate this step's optimizer.step() used, read at step start: by step end Bridge's scheduler has
    # already written the next step's value, and on RLP steps the schedule's get_lr() is the next-token one.
    _lr_in_force: float | None = None

    def _is_writer(self) -> bool:
        if not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1

    def _start(self, context) -> None:
        self._t_last = time.time()
        step = int(context.state.train_state.step)
        self._phase = self.phase_at(context.state.train_state.consumed_train_samples)
        if not self._is_writer():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if step > 0:  # resumed from the checkpoint of `step`: what came after it runs again
            dropped = trim_jsonl(self.path, step) + trim_jsonl(self.validation_path, step)
            if dropped:
                print(
                    f"[smartpt] resumed at step {step}: {dropped} records after it will be written again", flush=True
                )
        if not torch.cuda.is_available():
            print(
                "[smartpt] on CPU, Bridge's 'GPU utilization: ... MODEL_TFLOP/s/GPU' lines report this process's "
                "model TFLOP/s (0.0 for a tiny model is expected); the [smartpt] lines give samples/s and tokens/s",
                flush=True,
            )

    def _validation(self, context) -> None:
        """One line per validation pass: Bridge's averaged eval losses (on the last rank, which holds them).

        Bridge logs the same losses (``lm loss validation``, ``... ppl``) to its writers itself, so nothing is sent
        to them here."""
        if not self._is_writer():
            return
        ts = context.state.train_state
        record: dict = {"step": int(ts.step), "consumed_samples": int(ts.consumed_train_samples)}
        record["phase"] = self.phase_at(max(int(ts.consumed_train_samples) - 1, 0))
        for key, value in (context.total_loss_dict or {}).items():
            value = float(value)
            record[record_key(key)] = value
            if key == "lm loss":
                record["ppl"] = math.exp(min(value, 20.0))
        with self.validation_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
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
            record[record_key(key)] = float(value)
        if context.grad_norm is not None:
            record["grad_norm"] = float(context.grad_norm)
        if self._lr_in_force is not None:
            record["lr"] = self._lr_in_force
        ours: dict[str, float] = {}
        if self.breakdown is not None:
            if parallel_state.is_pipeline_last_stage():
                ours.update(self.breakdown.reduced(parallel_state.get_data_parallel_group()))
            self.breakdown.reset()
        extra: dict = {}
        for source in self.extra:
            extra.update(source())
        dt = max(now - self._t_last, 1e-9)
        ours["step_seconds"] = round(dt, 4)
        ours["samples_per_second"] = samples / dt
        if self.tokens_per_sample:
            ours["tokens_per_second"] = samples * self.tokens_per_sample / dt
        ours["flops_so_far"] = float(ts.floating_point_operations_so_far)
        record.update({record_key(k): v for k, v in ours.items()})
        record.update({record_key(k): v for k, v in extra.items() if k != "step"})
        phase = self.phase_at(first_sample)
        record["phase"] = phase
        switched = phase != self._phase and self._phase is not None
        self._phase, self._t_last = phase, now
        rate = self.rate.update(samples, dt)
        if not self._is_writer():
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        log_scalars(context.state, {metric_tag(k): v for k, v in ours.items() if k not in NOT_PLOTTED}, step)
        total = int(context.state.cfg.train.train_iters)
        print(progress_line(record, total, samples, rate, self.tokens_per_sample), flush=True)
        if switched:
            print(f"[smartpt] phase switch -> {phase} at step {step} (first sample {first_sample})", flush=True)


def _current_lr(context) -> float | None:
    groups = getattr(context.optimizer, "param_groups", None) or []
    return float(groups[0]["lr"]) if groups else None
