"""``examples/nemo_run/launch.py``: NeMo-Run runs ``smartpt train`` here (LocalExecutor) and writes the Slurm job.

The local test runs the launcher as a user would, to completion, and checks that the overrides reached the run. The
Slurm test has NeMo-Run write the sbatch script without submitting it (there is no Slurm here) and reads it: the
overrides, Bridge's PreemptionPlugin (signal and exit handler), W&B plugin, requeue and a stable run directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "examples" / "nemo_run" / "launch.py"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, NEMORUN_HOME=str(tmp_path / "nemo_run_home"), PYTHONPATH=str(ROOT), **extra)
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_slurm_job_script_carries_overrides_requeue_and_signal(tmp_path):
    overrides = ["+experiment=hopper", "train.train_iters=1000", "data.catalog=/lustre/data/catalog.yaml"]
    cmd = [sys.executable, str(LAUNCH), "--executor", "slurm", "--dryrun", "--account", "acct", "--partition", "batch"]
    cmd += ["--nodes", "2", "--run-root", "/lustre/runs", "--wandb-project", "smartpt", "--preempt-time", "240"]
    done = subprocess.run(
        [*cmd, *overrides],
        env=_env(tmp_path, WANDB_API_KEY="not-a-real-key"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = re.findall(r"sbatch script: (\S+)", done.stdout)
    script = Path(path).read_text()
    directives = set(re.findall(r"^#SBATCH (\S+)", script, flags=re.M))
    assert {"--requeue", "--signal=TERM@240", "--nodes=2", "--partition=batch", "--account=acct"} <= directives
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    tail = srun.split(" -m nemo_smartpt train ", 1)[1].split()
    # The user's overrides, in order, then the stable run directory, then what Bridge's plugins add.
    assert tail[:3] == overrides
    assert "out_dir=/lustre/runs/hopper" in tail
    assert {"train.exit_signal_handler=True", "logger.wandb_project=smartpt"} <= set(tail)
    assert "torchrun" in srun and "--nnodes 2" in srun and "--nproc-per-node 8" in srun
    assert "SLURM_JOB_ID" not in srun.split(" -m nemo_smartpt train ", 1)[1]  # no job id in the run directory
    assert "export WANDB_API_KEY=" in script
    subprocess.run(["bash", "-n", path], check=True)


@pytest.mark.slow
def test_local_executor_runs_smartpt_train_to_completion(tmp_path, bundled_data):
    cmd = [sys.executable, str(LAUNCH), "--executor", "local", "--run-root", str(tmp_path / "runs")]
    cmd += ["+experiment=volta", "train.train_iters=2", f"data.bundled_dir={bundled_data}", "eval.enabled=false"]
    done = subprocess.run(cmd, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run = tmp_path / "runs" / "volta"  # <run-root>/<experiment>
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # train.train_iters=2 reached the run
    assert json.loads((run / "smartpt_config.json").read_text())["experiment"] == "volta"
