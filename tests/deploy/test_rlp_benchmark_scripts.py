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


def test_shared_prefix_benchmark_runs_both_layouts_to_the_same_loss_and_gradients():
    import json

    out = _run(
        "bench_rlp_shared_prefix.py",
        *("--context", "16", "--thought", "8", "--rollouts", "4", "--groups", "2", "--hidden", "32"),
        *("--vocab", "256", "--repeats", "1"),
    )
    result = json.loads(out[out.index("{") :])
    assert result["loss_abs_diff"] <= 1e-6 and result["grad_max_abs_diff"] <= 1e-5 * result["grad_max_abs"], result
    # The prefix of 16 tokens is encoded once per group instead of once per rollout: 4 rows of 24 -> 16 + 4 x 8.
    assert result["tokens_per_row"] == 2 * 4 * 24 and result["tokens_grouped"] == 2 * (16 + 4 * 8)
    assert result["flops_ratio_accounting"] > 1 and result["flops_ratio_executed_dense_blocks"] > 1
    assert result["per_row_cpu_s"] > 0 and result["grouped_cpu_s"] > 0


def test_memory_benchmark_shows_the_chunked_logits_below_the_full_ones():
    import json

    out = _run(
        "bench_rlp_memory.py",
        *("--vocab", "32768", "--positions", "2", "--rollouts", "4", "--context", "16", "--thought", "16", "--json"),
    )
    summary = json.loads(out.strip().splitlines()[-1])
    # Full-vocabulary logits of 272 positions are ~35 MB per fp32 copy; the chunked path holds one 256-row chunk.
    assert summary["tokens per micro-batch"] == 272
    assert summary["rlp / rlp_full (after / before)"] < 0.75, summary
    assert summary["peak MB"]["rlp_full"] > summary["peak MB"]["ntp"], summary
