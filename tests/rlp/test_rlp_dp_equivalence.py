"""RLP with DP=2 through Bridge's ``pretrain()`` equals DP=1 on the combined batch (gloo, CPU).

Global batch 4, micro-batch 2: DP=1 runs two micro-batches per step on one process, DP=2 one per rank on two. Each
micro-batch's positions and thoughts are seeded by the samples' slot in the global batch (``microbatch · dp_size +
dp_rank``, Bridge's sampler order), and eq. 8's normaliser is the thought count summed over micro-batches and DP
ranks (``calculate_per_token_loss``), so both runs must take the same optimizer steps: the same DP-reduced metrics
and the same weights after every step (up to the order of float reductions).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.rlp_runs import tiny_rlp_run, write_tiny_rlp_corpus

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ITERS = 2
REDUCED = ("rlp reward mean", "rlp s_pred mean", "rlp s_ema mean", "rlp thought length", "rlp truncation rate")


def _train(rank, world_size, data_dir, out_dir):
    from megatron.bridge.training.callbacks import Callback
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir, out_dir, train_iters=ITERS, global_batch_size=4, micro_batch_size=2, lr=1e-2
    )
    weights = []

    class Probe(Callback):
        def on_train_step_end(self, context):
            gpt = unwrap_model(context.model)
            weights.append({n: p.detach().clone() for n, p in gpt.named_parameters()})

    pretrain(cfg, forward_step, callbacks=[*callbacks, Probe()])
    return weights


def _lines(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dp2_equals_dp1_on_the_combined_batch(tmp_path):
    write_tiny_rlp_corpus(tmp_path / "data")
    data = str(tmp_path / "data")
    (dp1,) = run_distributed(_train, 1, data, str(tmp_path / "dp1"), timeout=900)
    dp2 = run_distributed(_train, 2, data, str(tmp_path / "dp2"), timeout=900)
    for a, b in zip(_lines(tmp_path / "dp1"), _lines(tmp_path / "dp2")):
        assert a["step"] == b["step"]
        for key in REDUCED:
            assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (key, a[key], b[key])
        assert math.isclose(a["rlp loss"], b["rlp loss"], abs_tol=1e-8)
    for step in range(ITERS):
        for name, ref in dp1[step].items():
            torch.testing.assert_close(dp2[0][step][name], ref, rtol=0, atol=1e-6, msg=f"step {step} {name}")
            assert torch.equal(dp2[0][step][name], dp2[1][step][name])  # the replicas agree
        moved = max((dp1[step][n] - dp1[0][n]).abs().max() for n in dp1[0]) if step else 1.0
        assert moved > 0  # training did move the weights
