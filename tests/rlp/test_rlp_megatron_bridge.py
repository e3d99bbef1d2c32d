"""RLP through Megatron-Bridge's ``pretrain()`` on CPU: a tiny GPT, G=4, 8-token thoughts, a few steps.

The forward step prepares each micro-batch (positions, KV-cache rollouts, EMA baseline) from Bridge's own packed
samples and returns the RLP loss; the callback updates the EMA, logs the metrics and saves the EMA with the
checkpoint (a Megatron distributed checkpoint in the iteration directory).
"""

from __future__ import annotations

import json
import math

import pytest

from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.rlp_runs import tiny_rlp_run, write_tiny_rlp_corpus

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ITERS = 3
EXPECTED = (
    "rlp loss",
    "rlp reward mean",
    "rlp reward std",
    "rlp positive gain fraction",
    "rlp s_pred mean",
    "rlp s_ema mean",
    "rlp thought length",
    "rlp truncation rate",
    "rlp advantage std",
    "rlp clip fraction",
    "rlp generation tokens/s",
    "rlp training tokens/s",
    "rlp flops generation",
    "rlp flops training",
    "rlp flops baseline",
    "rlp ntp-equivalent tokens (ours)",
    "rlp ntp-equivalent tokens (paper)",
)


def _train(rank, world_size, data_dir: str, out_dir: str, iters: int = ITERS):
    from megatron.bridge.training.pretrain import pretrain

    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir, out_dir, train_iters=iters, global_batch_size=4, micro_batch_size=2, lr=1e-3, save_interval=ITERS
    )
    cfg.scheduler.override_opt_param_scheduler = True  # the resumed run has more train_iters than the saved one
    pretrain(cfg, forward_step, callbacks=callbacks)
    run = callbacks[0].run
    return run.totals, run.ema.num_updates


def test_rlp_runs_through_bridge_pretrain(tmp_path):
    write_tiny_rlp_corpus(tmp_path / "data")
    out = tmp_path / "run"
    ((totals, ema_updates),) = run_distributed(_train, 1, str(tmp_path / "data"), str(out), timeout=600)
    assert totals["steps"] == ITERS and ema_updates == ITERS and totals["generated_tokens"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, ITERS + 1))
    for m in lines:
        for key in EXPECTED:
            assert key in m and math.isfinite(m[key]), (key, m.get(key))
        assert m["rlp prefills"] == m["rlp positions"] > 0  # one prefill per group
        assert 0 < m["rlp thought length"] <= 8
    assert (out / "checkpoints" / f"iter_{ITERS:07d}" / "rlp_ema" / "metadata.json").exists()  # φ, sharded
    assert list((out / "tb").iterdir())  # tensorboard events written

    # Resume from the iteration-3 checkpoint: the EMA and counters come back from the EMA checkpoint, then one more step.
    ((totals, ema_updates),) = run_distributed(_train, 1, str(tmp_path / "data"), str(out), ITERS + 1, timeout=600)
    assert totals["steps"] == ITERS + 1 and ema_updates == ITERS + 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == ITERS + 1
