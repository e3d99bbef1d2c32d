"""How the world's study and ``smartpt demo`` train: model, schedule and RLP settings, as ``smartpt train`` overrides.

One definition for both, so the demo shows what the study measured. Every value was chosen on the world's dev tasks
(probes in ``examples/studies/README.md``), never on the reported ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorldRecipe:
    """Sizes and schedule of a run on the world (the study's command-line flags default to these)."""

    seq_length: int = 128
    global_batch_size: int = 16
    micro_batch_size: int = 16
    hidden_size: int = 128
    num_layers: int = 2
    """Two, not four: as fast per token to store the facts, and 0.21 against 0.35 s per step (round 2)."""
    heads: int = 4
    position_embedding: str = "rope"
    """Copying numbers from the question formed with rotary positions only (round 2, q12)."""
    lr: float = 5e-3
    min_lr_ratio: float = 0.1
    """Cosine decay to ``lr`` x this at the last step."""
    warmup: int = 30
    """Linear warm-up steps (a quarter of the run at most, for short test runs)."""

    def overrides(self, train_iters: int) -> list[str]:
        return [
            f"train.train_iters={train_iters}",
            f"model.seq_length={self.seq_length}",
            f"train.global_batch_size={self.global_batch_size}",
            f"train.micro_batch_size={self.micro_batch_size}",
            f"model.hidden_size={self.hidden_size}",
            f"model.ffn_hidden_size={4 * self.hidden_size}",
            f"model.num_layers={self.num_layers}",
            f"model.num_attention_heads={self.heads}",
            f"model.position_embedding_type={self.position_embedding}",
            f"optimizer.lr={self.lr}",
            f"optimizer.min_lr={self.lr * self.min_lr_ratio}",
            "scheduler.lr_decay_style=cosine",
            f"scheduler.lr_warmup_iters={max(1, min(self.warmup, train_iters // 4))}",
        ]


RLP_OVERRIDES = [
    "rlp.num_rollouts=4",
    # A world thought ("Kal has 6 coins. Kal gets 4 more: 6 + 4 = 10. then ...") is ~30 tokens; the cap leaves room
    # to close it, and a scoring row (context + <think> + thought + </think> + x_t) fits 128 positions: 72 + 1 + 40
    # + 1 + 1.
    "rlp.max_thought_tokens=40",
    "rlp.max_context=72",
    "rlp.min_context=8",
    # The paper's 1e-6 suits a pretrained 1.7B model and moves a million-parameter one nowhere in a dozen steps;
    # 1e-3 (the first study) drove thoughts to the length cap.
    "rlp.lr=3e-4",
    # 24 of the ~55 positions a step's 16 sequences offer: the rollouts decode one position's group at a time, and
    # on two CPU cores all 55 cost ~15 s per step, which the study's 25 minutes cannot hold (round 3).
    "rlp.max_positions_per_microbatch=24",
]
"""Hopper's RLP settings on the world (study and demo)."""
