"""``smartpt demo``: the embedded default that runs on any CPU machine with no network.

Today it is the smoke run of the foundation: it writes a small synthetic corpus as real Megatron indexed datasets,
trains a tiny megatron-core GPT through Megatron-Bridge's ``pretrain()`` on the CPU, and reports the loss curve.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nemo_smartpt.overrides import build_config


@dataclass
class DemoConfig:
    """Settings of ``smartpt demo`` (override any with ``key=value``)."""

    out_dir: str = "runs/demo"
    """Where data, logs and the report go."""
    train_iters: int = 30
    """Optimizer steps of the tiny model."""
    seed: int = 1234
    """Seed for data generation, weights and sample order."""
    num_documents: int = 2000
    """Synthetic documents to write."""


def main(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print(_help())
        return 0
    cfg = build_config(DemoConfig, args)
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.bridge.indexed_provider import IndexedGPTProvider
    from nemo_smartpt.bridge.launch import ensure_single_process_env
    from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    out = Path(cfg.out_dir)
    model = TinyModelConfig()
    started = time.time()
    docs = progression_documents(cfg.num_documents, model.vocab_size, eod=model.vocab_size - 1, seed=cfg.seed)
    prefix = write_indexed_dataset(out / "data" / "synthetic", docs)
    provider = IndexedGPTProvider(prefixes=[prefix], seq_length=model.seq_length, seed=cfg.seed)
    config = cpu_pretrain_config(provider, str(out), model=model, train_iters=cfg.train_iters, seed=cfg.seed)
    losses: list[float] = []
    ensure_single_process_env()
    pretrain(config, forward_step, callbacks=[_LossLog(losses)])
    summary = {
        "train_iters": cfg.train_iters,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "losses": losses,
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo: loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} in {summary['wall_seconds']} s")
    print(f"demo: wrote {out / 'summary.json'}")
    return 0


def _LossLog(losses: list[float]):
    from megatron.bridge.training.callbacks import Callback

    class LossLog(Callback):
        def on_train_step_end(self, context):
            if context.loss_dict and "lm loss" in context.loss_dict:
                losses.append(float(context.loss_dict["lm loss"]))

    return LossLog()


def _help() -> str:
    from nemo_smartpt.overrides import describe

    return "usage: smartpt demo [key=value ...]\n\n" + describe(DemoConfig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
