"""The RLP benchmark and the GPU check script run end to end at toy size (so they cannot rot between GPU loans).

Numbers are not asserted (timings drift on shared machines); the scripts must finish, print every comparison, and
report no failed check. On CPU the GPU check's dynamic-engine arm runs over reference paged-attention kernels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_check_dry_run_passes_every_check():
    out = _run("gpu_check_rlp.py", "--dry-run", "--repeats", "1")
    status = re.findall(r"^\[(ok|fail|skip)\] ([^:]+)", out, flags=re.MULTILINE)
    assert status and not [name for s, name in status if s == "fail"], out
    names = {name for s, name in status if s == "ok"}
    for expected in (
        "KV-cache greedy == re-encoding",
        "dynamic engine greedy vs KV cache",
        "RLP step (kv_cache)",
        "RLP step (dynamic)",
    ):
        assert expected in names, (expected, out)
    assert "1.000 agree" in out  # fp32 on CPU: the engine's greedy thoughts equal the KV-cache sampler's


def test_rlp_benchmark_prints_both_ratios():
    out = _run("bench_rlp.py", "--rollouts", "4", "--thought", "8", "--repeats", "1")
    assert re.search(r"naive / shared-prefix\s*:\s*[\d.]+x", out), out
    assert re.search(r"RLP sample throughput [\d.]+x of NTP", out), out
