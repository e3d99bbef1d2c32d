"""Metrics once, everywhere: one tiny ``smartpt train +experiment=hopper`` run, read back as a user would.

- TensorBoard (the run's ``tb/`` event files through tensorboard's ``EventAccumulator``): every metric of ours under
  one tag without spaces or parentheses; the RLP metrics are not repeated by Bridge (``rlp reward mean``, its
  "vs samples" twin) nor by the metrics callback (``smartpt/rlp_...``); Bridge keeps its own ``lm loss``.
- W&B / MLflow / Comet: the same ``log_scalars`` call that fed TensorBoard hands each metric once to the writer
  objects Bridge creates from ``config.logger`` (neither package is installed here, so recorders with their call
  signatures stand in for them).
- The console: the progress line shows the RLP reward on RLP steps and a smoothed rate; Bridge's FP8 "Traceback"
  INFO is gone and its CPU "GPU utilization" line is explained.
- Resume: a run restarted from an earlier checkpoint records each step once in ``metrics.jsonl`` and
  ``validation.jsonl``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nemo_smartpt.bridge.metrics import RateMeter, log_scalars, metric_tag, record_key, trim_jsonl

ROOT = Path(__file__).resolve().parents[2]
# Three steps, the last one RLP; checkpoints at 2 and 3 (the resume test restarts from 2); a validation pass per step.
RUN_ARGS = [
    "+experiment=hopper",
    "train.train_iters=3",
    "schedule.rlp_steps=1",
    "model.seq_length=128",
    "checkpoint.save_interval=2",
    "validation.eval_interval=1",
    "validation.eval_iters=1",
    "eval.enabled=false",
]


def _train(out: Path, bundled: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nemo_smartpt", "train", *RUN_ARGS, f"out_dir={out}", f"data.bundled_dir={bundled}"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory, bundled_data):
    out = tmp_path_factory.mktemp("metrics") / "hopper"
    done = _train(out, bundled_data)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return SimpleNamespace(out=out, output=done.stdout + done.stderr, bundled=bundled_data)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tags(out: Path) -> dict[str, int]:
    """Every scalar tag in the run's event files -> number of events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    counts: dict[str, int] = {}
    for events in sorted((out / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            counts[tag] = counts.get(tag, 0) + len(acc.Scalars(tag))
    return counts


@pytest.mark.slow
def test_each_metric_has_one_tensorboard_tag(hopper_run):
    tags = _tags(hopper_run.out)
    ours = {t for t in tags if t.split("/")[0] in ("rlp", "loss", "tokens", "smartpt")}
    bridge = set(tags) - ours
    for tag in ours:
        assert not re.search(r"[\s()]", tag), tag
    # Bridge's own: the next-token loss (with its "vs samples" twin) and validation; none of our RLP keys.
    assert {"lm loss", "lm loss validation"} <= bridge
    assert not [t for t in bridge if "rlp" in t], sorted(bridge)
    # The RLP reward: one tag, one point (one RLP step), under rlp/.
    assert [t for t in tags if "reward_mean" in t or "reward mean" in t] == ["rlp/reward_mean"]
    assert tags["rlp/reward_mean"] == 1
    assert not [t for t in tags if t.startswith("smartpt/rlp") or t.startswith("smartpt/val")]
    # Per-source and per-phase losses: a tag per source/phase, one point per next-token step that served it.
    records = _jsonl(hopper_run.out / "metrics.jsonl")
    for key in {k for r in records for k in r if k.startswith("loss/")}:
        assert tags[key] == sum(key in r for r in records), key
    assert {"loss/phase/phase1", "smartpt/samples_per_second", "smartpt/tokens_per_second"} <= set(tags)
    # Every metric of the RLP step in metrics.jsonl reached TensorBoard once, by its one name.
    (rlp_record,) = [r for r in records if "rlp_reward_mean" in r]
    for key in (k for k in rlp_record if k.startswith("rlp_")):
        assert tags["rlp/" + key[4:]] == 1, key


@pytest.mark.slow
def test_each_record_has_the_learning_rate_its_step_ran_with(hopper_run):
    """Two next-token steps at the recipe's rates, then one RLP step at RLP's own (``rlp.lr``, 1e-6 by default):
    ``lr`` is read when the step starts, not from the schedule afterwards (by then the next step's next-token value)."""
    records = _jsonl(hopper_run.out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    (rlp_record,) = [r for r in records if "rlp_lr" in r]
    assert rlp_record["step"] == 3
    assert rlp_record["lr"] == rlp_record["rlp_lr"] == pytest.approx(1e-6)
    # cpu_tiny's next-token schedule: one warm-up step from 0, then 3e-3 (what the optimizer ran with, step by step).
    assert [r["lr"] for r in records[:2]] == [0.0, pytest.approx(3e-3)]


@pytest.mark.slow
def test_console_shows_reward_and_smoothed_rate_without_bridge_noise(hopper_run):
    out = hopper_run.output
    lines = [line for line in out.splitlines() if line.startswith("[smartpt] step ")]
    assert [int(re.match(r"\[smartpt\] step (\d+)/3", line).group(1)) for line in lines] == [1, 2, 3]
    assert re.search(r"step 1/3 loss \d+\.\d{4} phase=phase1 \| \d+ tokens/s [\d.]+ samples/s ETA", lines[0])
    assert re.search(r"step 3/3 rlp loss \S+ reward -?\d", lines[2]), lines[2]
    assert "FP8GlobalStateManager" not in out and "Traceback" not in out
    if "MODEL_TFLOP/s/GPU" in out:  # Bridge prints it with print(); it is explained once instead
        assert out.count("[smartpt] on CPU, Bridge's 'GPU utilization") == 1


@pytest.mark.slow
def test_resume_records_each_step_once(hopper_run, tmp_path):
    """Restart from the step-2 checkpoint (as after a crash during step 3): step 3 runs again, and is recorded once."""
    out = tmp_path / "hopper"
    shutil.copytree(hopper_run.out, out)
    checkpoints = out / "checkpoints"
    shutil.rmtree(checkpoints / "iter_0000003")
    # What Bridge leaves after saving step 2: its tracker files name iteration 2 (latest_train_state.pt is read).
    (checkpoints / "latest_checkpointed_iteration.txt").write_text("2")
    shutil.copy(checkpoints / "iter_0000002" / "train_state.pt", checkpoints / "latest_train_state.pt")
    before = _jsonl(out / "metrics.jsonl")
    validated = [r["step"] for r in _jsonl(out / "validation.jsonl")]
    done = _train(out, hopper_run.bundled)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    after = _jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in before] == [r["step"] for r in after] == [1, 2, 3]
    assert after[:2] == before[:2]  # what was recorded before the checkpoint is kept as it was
    # A pass per step, and Bridge's end-of-training pass at step 3: the same passes as the run that was not resumed.
    assert [r["step"] for r in _jsonl(out / "validation.jsonl")] == validated
    assert validated[:3] == [1, 2, 3]
    assert "resumed at step 2" in done.stdout


def test_trim_jsonl_drops_records_after_the_resume_step_and_keeps_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert trim_jsonl(path, 2) == 4
    assert _jsonl(path) == rows[:2]
    assert trim_jsonl(path, 2) == 0 and trim_jsonl(tmp_path / "absent.jsonl", 2) == 0


def test_metric_names_have_no_spaces_or_parentheses():
    assert metric_tag("rlp reward mean") == "rlp/reward_mean"
    assert metric_tag("rlp generation tokens/s") == "rlp/generation_tokens_per_s"
    assert metric_tag("rlp ntp-equivalent tokens (ours)") == "rlp/ntp_equivalent_tokens_ours"
    assert metric_tag("loss/source/crawl_high") == "loss/source/crawl_high"
    assert metric_tag("samples_per_second") == "smartpt/samples_per_second"
    assert record_key("rlp reward mean") == "rlp_reward_mean" and record_key("lm loss") == "lm_loss"


class _Recorder:
    """Records calls with the signatures of wandb's run (``log(dict, step)``), MLflow's module
    (``log_metrics(dict, step=)``), Comet's experiment and TensorBoard's SummaryWriter."""

    def __init__(self):
        self.calls = []

    def log(self, metrics, step):
        self.calls.append((dict(metrics), step))

    def log_metrics(self, metrics, step):
        self.calls.append((dict(metrics), step))

    def add_scalar(self, tag, value, step):
        self.calls.append(({tag: value}, step))


def test_log_scalars_reaches_every_configured_logger_once():
    state = SimpleNamespace(
        tensorboard_logger=_Recorder(), wandb_logger=_Recorder(), mlflow_logger=_Recorder(), comet_logger=_Recorder()
    )
    log_scalars(state, {"rlp/reward_mean": 0.5, "loss/source/web": 2.0, "smartpt/bad": float("nan")}, 7)
    expected = {"rlp/reward_mean": 0.5, "loss/source/web": 2.0}
    assert state.wandb_logger.calls == state.mlflow_logger.calls == state.comet_logger.calls == [(expected, 7)]
    assert sorted(state.tensorboard_logger.calls, key=str) == sorted(
        [({k: v}, 7) for k, v in expected.items()], key=str
    )
    log_scalars(SimpleNamespace(), expected, 1)  # no logger configured (or not the last rank): nothing to do


def test_rate_meter_smooths_towards_the_new_rate():
    meter = RateMeter(weight=0.5)
    assert meter.update(8, 4.0) == 2.0  # first step: its own rate
    assert meter.update(8, 1.0) == pytest.approx(5.0)  # halfway to 8 samples/s
