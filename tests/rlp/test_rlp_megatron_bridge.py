"""RLP through Megatron-Bridge's ``pretrain()`` on CPU: a tiny GPT, G=4, 8-token thoughts, a few steps.

The forward step prepares each micro-batch (positions, KV-cache rollouts, EMA baseline) from Bridge's own packed
samples and returns the RLP loss; the callback updates the EMA, logs the metrics and saves the EMA side file with the
checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_smartpt.testing.distributed import run_distributed

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

    from nemo_smartpt.bridge.indexed_provider import IndexedGPTProvider
    from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config
    from nemo_smartpt.rlp import RLPConfig, ThoughtLayout
    from nemo_smartpt.rlp.callbacks import build_rlp_training

    model = TinyModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=64)
    provider = IndexedGPTProvider(prefixes=[str(Path(data_dir) / "train")], seq_length=model.seq_length)
    cfg = cpu_pretrain_config(
        provider,
        out_dir,
        model=model,
        train_iters=iters,
        global_batch_size=4,
        micro_batch_size=2,
        lr=1e-3,
        save_interval=ITERS,
    )
    cfg.scheduler.override_opt_param_scheduler = True  # the resumed run has more train_iters than the saved one
    cfg.model.calculate_per_token_loss = True  # eq. 8's normaliser: thoughts summed over micro-batches and ranks
    rlp = RLPConfig(num_rollouts=4, max_thought_tokens=8, min_context=4, max_context=24, seed=7)
    layout = ThoughtLayout(prompt_ids=(60,), think_open_ids=(61,), think_close_ids=(62,), pad_id=0)
    forward_step, callbacks = build_rlp_training(rlp, layout, eod_id=63, run_dir=out_dir)
    pretrain(cfg, forward_step, callbacks=callbacks)
    run = callbacks[0].run
    return run.totals, run.ema.num_updates


def test_rlp_runs_through_bridge_pretrain(tmp_path):
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    docs = progression_documents(num_docs=300, vocab_size=60, eod=63, min_len=12, max_len=40, seed=0)
    write_indexed_dataset(tmp_path / "data" / "train", docs)
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
    assert (out / "checkpoints" / f"iter_{ITERS:07d}" / "rlp_ema_rank0.pt").exists()
    assert list((out / "tb").iterdir())  # tensorboard events written

    # Resume from the iteration-3 checkpoint: the EMA and counters come back from the side file, then one more step.
    ((totals, ema_updates),) = run_distributed(_train, 1, str(tmp_path / "data"), str(out), ITERS + 1, timeout=600)
    assert totals["steps"] == ITERS + 1 and ema_updates == ITERS + 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == ITERS + 1
