"""Running ``smartpt`` as a user types it, for tests: a subprocess with this checkout's package first on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def user_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def smartpt_train(*args: str, cwd=None, timeout: int = 3600) -> subprocess.CompletedProcess:
    """``python -m nemo_smartpt train ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "nemo_smartpt", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=user_env(),
        cwd=cwd,
    )


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def last_per_step(records: list[dict]) -> dict[int, dict]:
    """The record each step ended with (a resume may replay the steps after its checkpoint)."""
    return {r["step"]: r for r in records}
