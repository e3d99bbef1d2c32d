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


def _run(script: str, *args: str, stderr: bool = False):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stdout, result.stderr) if stderr else result.stdout


def test_gpu_check_dry_run_passes_every_check():
    import json

    out, err = _run("gpu_check_rlp.py", "--dry-run", "--repeats", "1", stderr=True)
    result = json.loads(out)  # stdout is one JSON object
    status = re.findall(r"^\[(ok|fail|skip)\] ([^:]+)", err, flags=re.MULTILINE)
    assert status and not [name for s, name in status if s == "fail"], err
    assert not [k for k, v in result.items() if isinstance(v, dict) and v.get("status") == "fail"], result
    for key in ("kv_equality", "dynamic_engine", "step_kv_cache", "step_dynamic", "memory"):
        assert result[key]["status"] == "ok", (key, result[key])
    assert result["shared_prefix"]["status"] in ("ok", "skip")  # skipped where rlp.shared_prefix_forward is absent
    assert result["dynamic_engine"]["greedy_agreement"] == 1.0  # fp32 on CPU: the engine's greedy thoughts equal ours
    assert result["step_kv_cache"]["rlp_vs_ntp_sample_throughput"] > 0


def test_rlp_benchmark_prints_both_ratios():
    out = _run("bench_rlp.py", "--rollouts", "4", "--thought", "8", "--repeats", "1")
    assert re.search(r"naive / shared-prefix\s*:\s*[\d.]+x", out), out
    assert re.search(r"RLP sample throughput [\d.]+x of NTP", out), out
