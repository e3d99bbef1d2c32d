"""One RLP step's metrics: what the loss reduced, the preparation's work, throughput and FLOPs; and where they go.

The rank that logs is the pipeline-last, TP-0, DP-0 one (it holds the reduced loss metrics; global rank 0 at PP = 1):
it prints one ``[rlp]`` line per step and appends the record to ``<run_dir>/metrics.jsonl``; every rank hands the
metrics once, under ``rlp/...``, to the loggers Bridge set up (only Bridge's writer rank has them).
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING

import torch

from nemo_smartpt.rlp.flops import ntp_flops_per_token, paper_ntp_equivalent_tokens, rlp_step_flops
from nemo_smartpt.rlp.megatron.prepare import PrepStats
from nemo_smartpt.rlp.megatron.rollout import RolloutCounters

if TYPE_CHECKING:
    from nemo_smartpt.rlp.megatron.callbacks import RLPRun


def step_metrics(run: RLPRun, loss_dict: dict, stats: PrepStats, counters: RolloutCounters, step_s: float) -> dict:
    """One step's metrics: the reduced loss-side pairs, derived stds, throughput and FLOPs (this DP rank's work)."""
    out = {k: float(v) for k, v in loss_dict.items() if k.startswith("rlp ")}
    if "rlp reward sq mean" in out and "rlp reward mean" in out:
        out["rlp reward std"] = math.sqrt(max(out.pop("rlp reward sq mean") - out["rlp reward mean"] ** 2, 0.0))
    if "rlp advantage var" in out:
        out["rlp advantage std"] = math.sqrt(max(out.pop("rlp advantage var"), 0.0))
    train_s = max(step_s - stats.generation_s - stats.baseline_s, 1e-9)
    out.update(
        {
            "rlp positions": stats.positions,
            "rlp skipped documents": stats.skipped_documents,
            "rlp carried positions": stats.carried_positions,
            "rlp dropped positions": stats.dropped_positions,
            "rlp prefills": counters.prefills,
            "rlp prefill tokens": counters.prefill_tokens,
            "rlp prefix cached tokens": counters.prefix_cached_tokens,
            "rlp generation s": stats.generation_s,
            "rlp baseline s": stats.baseline_s,
            "rlp step s": step_s,
            "rlp generation tokens/s": stats.generated_tokens / max(stats.generation_s, 1e-9),
            "rlp training tokens/s": stats.scoring_tokens / train_s,
        }
    )
    if run.flops_spec is not None and stats.positions:
        B, G = stats.positions, run.cfg.num_rollouts
        prefix = stats.rollout_prompt_tokens / B
        thought = stats.generated_tokens / (B * G)
        flops = rlp_step_flops(
            run.flops_spec,
            num_positions=B,
            num_rollouts=G,
            rollout_prefix_tokens=prefix,
            thought_tokens=thought,
            baseline_tokens=stats.baseline_tokens / B if stats.baseline_forwards else 0.0,
            baseline_fraction=1.0 if stats.baseline_forwards else 0.0,
            shared_prefix_training=run.cfg.shared_prefix_forward,
        )
        ntp_per_token = ntp_flops_per_token(run.flops_spec, run.seq_length or int(prefix + thought))
        # stats.ntp_tokens > 0 only under the mixed objective: its forward+backward cost is charged at the NTP rate.
        total = flops.total + stats.ntp_tokens * ntp_per_token
        out.update(
            {
                "rlp flops generation": flops.generation,
                "rlp flops training": flops.training,
                "rlp flops baseline": flops.baseline,
                "rlp flops total": total,
                "rlp ntp-equivalent tokens (ours)": total / ntp_per_token,
                "rlp ntp-equivalent tokens (paper)": paper_ntp_equivalent_tokens(G, prefix + thought, B, 1, 0.0)
                + stats.input_tokens,
            }
        )
    return out


def is_metrics_writer() -> bool:
    """The rank that logs: pipeline-last, TP-0, DP-0 (it holds the reduced loss metrics; global rank 0 at PP = 1)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    return (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )


def emit_step_metrics(run: RLPRun, state, metrics: dict, step: int) -> None:
    """Print the step line, append to ``<run_dir>/metrics.jsonl`` (writer rank), and log once to Bridge's loggers."""
    if is_metrics_writer():
        shown = ("rlp loss", "rlp reward mean", "rlp s_pred mean", "rlp thought length", "rlp truncation rate")
        print(f"[rlp] step {step} " + " ".join(f"{k[4:]}={metrics[k]:.4g}" for k in shown if k in metrics), flush=True)
        if run.run_dir:
            os.makedirs(run.run_dir, exist_ok=True)
            with open(os.path.join(run.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
    from nemo_smartpt.bridge.metrics import log_scalars, metric_tag

    # Once, under rlp/..., to every logger Bridge set up (TensorBoard, W&B, MLflow, Comet).
    log_scalars(state, {metric_tag(k): v for k, v in metrics.items() if k != "step"}, step)
