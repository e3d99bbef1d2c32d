"""Proof that the real stack runs on CPU: a tiny GPT trained through Megatron-Bridge's ``pretrain()``.

The data is real ``.bin/.idx`` written by megatron-core's ``IndexedDatasetBuilder``, fed by our own
``DatasetProvider`` (``IndexedGPTProvider``) that builds megatron-core ``GPTDataset``s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_smartpt.testing.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


class LossRecorder:
    """A Bridge callback that keeps the reduced training loss of every step."""

    def __init__(self):
        from megatron.bridge.training.callbacks import Callback

        self.losses: list[float] = []
        recorder = self

        class _Cb(Callback):
            def on_train_step_end(self, context):
                loss = context.loss_dict.get("lm loss")
                if loss is not None:
                    recorder.losses.append(float(loss))

        self.callback = _Cb()


def _train(rank, world_size, data_dir: str, out_dir: str, tp: int, pp: int, iters: int):
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.bridge.indexed_provider import IndexedGPTProvider
    from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config

    model = TinyModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=64)
    provider = IndexedGPTProvider(prefixes=[str(Path(data_dir) / "train")], seq_length=model.seq_length)
    cfg = cpu_pretrain_config(
        provider,
        out_dir,
        model=model,
        train_iters=iters,
        global_batch_size=8,
        micro_batch_size=4,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        lr=1e-2,
    )
    recorder = LossRecorder()
    pretrain(cfg, forward_step, callbacks=[recorder.callback])
    return recorder.losses


def test_bridge_pretrain_loss_decreases(tmp_path):
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    docs = progression_documents(num_docs=400, vocab_size=64, eod=63, seed=0)
    write_indexed_dataset(tmp_path / "data" / "train", docs)
    (losses,) = run_distributed(_train, 1, str(tmp_path / "data"), str(tmp_path / "run"), 1, 1, 12, timeout=600)
    print(json.dumps(losses))
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, losses
