"""A tiny RLP run through Megatron-Bridge's ``pretrain()`` on CPU: the set-up every RLP integration test shares.

Vocabulary 64: ids 0..59 are document text (learnable progressions), 60/61/62 the thought prompt, ``<think>`` and
``</think>``, 63 the end of document. The model is Bridge's GPT provider at 2 layers × 64 wide over a real
megatron-core indexed dataset; RLP draws G = 4 thoughts of at most 8 tokens per position. Tests change what they
compare (parallel layout, checkpointing, RLP fields) through the keyword arguments and by editing the returned
Bridge config before calling ``pretrain``.
"""

from __future__ import annotations

from pathlib import Path

from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.prompt import ThoughtLayout

TINY_RLP_LAYOUT = ThoughtLayout(prompt_ids=(60,), think_open_ids=(61,), think_close_ids=(62,), pad_id=0)
TINY_RLP_EOD = 63
TINY_RLP_DEFAULTS = dict(num_rollouts=4, max_thought_tokens=8, min_context=4, max_context=24, seed=7)


def write_tiny_rlp_corpus(data_dir: str | Path, min_len: int = 12, num_docs: int = 300) -> str:
    """Write ``<data_dir>/train.{bin,idx}`` (documents of ``min_len``..40 text tokens); return ``data_dir``."""
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    docs = progression_documents(
        num_docs=num_docs, vocab_size=60, eod=TINY_RLP_EOD, min_len=min_len, max_len=40, seed=0
    )
    write_indexed_dataset(Path(data_dir) / "train", docs)
    return str(data_dir)


def tiny_rlp_run(
    data_dir: str, out_dir: str, rlp: dict | None = None, start_step: int | None = None, **pretrain_config
):
    """``(bridge_config, forward_step, callbacks)`` of a tiny RLP run; ``callbacks[0].run`` is the shared RLP state.

    Args:
        data_dir: a folder written by :func:`write_tiny_rlp_corpus`.
        out_dir: run directory (checkpoints, ``metrics.jsonl``).
        rlp: :class:`RLPConfig` fields over :data:`TINY_RLP_DEFAULTS`.
        start_step: the first RLP step (None: all steps); the caller's forward step runs next-token steps before it.
        pretrain_config: keyword arguments of :func:`nemo_smartpt.bridge.recipe.cpu_pretrain_config` (train_iters,
            batch sizes, pipeline_parallel, save_interval, lr, ...).
    """
    from nemo_smartpt.bridge.indexed_provider import IndexedGPTProvider
    from nemo_smartpt.bridge.recipe import TinyModelConfig, cpu_pretrain_config
    from nemo_smartpt.rlp.megatron.callbacks import build_rlp_training

    model = TinyModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=64)
    provider = IndexedGPTProvider(prefixes=[str(Path(data_dir) / "train")], seq_length=model.seq_length)
    cfg = cpu_pretrain_config(provider, out_dir, model=model, **pretrain_config)
    cfg.model.calculate_per_token_loss = True  # eq. 8's normaliser: thoughts summed over micro-batches and ranks
    rlp_cfg = RLPConfig(**{**TINY_RLP_DEFAULTS, **(rlp or {})})
    forward_step, callbacks = build_rlp_training(
        rlp_cfg, TINY_RLP_LAYOUT, eod_id=TINY_RLP_EOD, run_dir=out_dir, start_step=start_step
    )
    return cfg, forward_step, callbacks
