"""``smartpt eval`` end to end: a tiny run on the world, evaluated at the end of training (live model) and again
from its checkpoint by the command a user types; both write lm-eval's results JSON with standard errors, and the
checkpoint gives exactly the live model's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def smartpt(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "nemo_smartpt", *args], capture_output=True, text=True, env=env)


def test_eval_of_a_trained_checkpoint_equals_the_end_of_training_eval(tmp_path):
    from nemo_smartpt.world.build import ensure_world
    from nemo_smartpt.world.spec import tiny_spec

    world = tmp_path / "world"
    catalog = ensure_world(world, tiny_spec())
    run = tmp_path / "run"
    trained = smartpt(
        "train",
        "+experiment=ampere",
        f"data.catalog={catalog}",
        f"data.tokenizer={world / 'tokenizer'}",
        f"out_dir={run}",
        "train.train_iters=4",
        "model.seq_length=128",
        "train.global_batch_size=8",
        "train.micro_batch_size=4",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    live = json.loads((run / "eval.json").read_text())
    assert sorted(live["results"]) == ["world_knowledge", "world_reasoning"]  # *_dev tasks are not reported
    knowledge, reasoning = live["results"]["world_knowledge"], live["results"]["world_reasoning"]
    assert 0.0 <= knowledge["acc,none"] <= 1.0 and knowledge["acc_stderr,none"] > 0
    assert "exact_match,answer" in reasoning and "exact_match_stderr,answer" in reasoning
    assert live["n-samples"]["world_knowledge"]["effective"] == 8 * 4  # every fact of the tiny world
    assert live["n-samples"]["world_reasoning"]["effective"] == 20

    evaluated = smartpt("eval", f"run_dir={run}", f"out={tmp_path / 'eval.json'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "world_knowledge acc=" in evaluated.stdout
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["checkpoint"].endswith("iter_0000004")
    for task, metrics in live["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert again["results"][task][key] == pytest.approx(value, abs=1e-9), (task, key)


def test_eval_errors_are_one_line(tmp_path):
    missing = smartpt("eval")
    assert missing.returncode == 2 and "run_dir=DIR is required" in missing.stderr
    empty = smartpt("eval", f"run_dir={tmp_path}")
    assert empty.returncode == 2 and "no checkpoint" in empty.stderr.strip().splitlines()[-1]
