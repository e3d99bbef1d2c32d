"""The data-matched split: one fixed reasoning budget shared between pretraining and SFT (arXiv 2510.03264).

Mental model. The selection's budget B (``select.max_tokens`` and/or ``select.max_examples``) is the whole
reasoning budget. ``split.sft_fraction`` f gives SFT ``floor(f * B)`` and pretraining the rest, ``B - floor(f * B)``.

Which side an example goes to depends only on its normalised question: ``u = blake2b(salt, question) / 2**64`` and
the example is an SFT example iff ``u < f``. Hence:

- zero overlap by normalised question, by construction (equal questions hash equally, so they land on one side);
- the assignment is the same in every run, for any worker count and any chunking;
- a different ``split.salt`` draws another, equally sized split.

"Exact budget" means: each side takes its examples in input order, first fit. An example that would push the side
over its token (or example) budget is skipped (counted as ``budget_full``) and later, smaller ones may still fit; a side
never exceeds its budget, and with an example budget it reaches it exactly whenever its side has enough examples
(a shortfall is reported in the stats). Tokens are counted in one unit on both sides: the tokens of the rendered
pretraining document including EOD, so "20% of the budget to SFT" means the same data volume either way. Text docs
(no question/answer to put in a chat) always go to pretraining.

The SFT side is written as chat jsonl, one ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
per line: the layout Megatron-Bridge's ``GPTSFTChatDataset`` reads (``use_hf_tokenizer_chat_template=True``) and its
HF conversation adapters accept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nemo_smartpt.reasoning.schemas import ReasoningDataError

PRETRAIN, SFT = "pretrain", "sft"


@dataclass
class SplitConfig:
    """How the reasoning budget is shared between pretraining and SFT."""

    sft_fraction: float = 0.0
    """Share of the budget (and of the questions, by hash) that goes to SFT; 0 = no SFT output."""
    salt: str = ""
    """Changes the hash, drawing another split of the same size."""
    sft_output: str = ""
    """SFT chat jsonl path; empty = ``<output_prefix>.sft.jsonl``."""


class SplitConfigError(ReasoningDataError):
    """A split setting that cannot work."""


def check_split_config(cfg: SplitConfig) -> None:
    """Validate ``cfg`` at setup (no I/O)."""
    if not 0.0 <= cfg.sft_fraction <= 1.0:
        raise SplitConfigError(f"split.sft_fraction must be in [0, 1], got {cfg.sft_fraction}")


def side_of(split_hash: int, sft_fraction: float) -> str:
    """``sft`` iff the 64-bit hash, read as a number in [0, 1), is below ``sft_fraction``."""
    return SFT if split_hash / 2.0**64 < sft_fraction else PRETRAIN


def chat_line(messages: list[dict[str, str]]) -> str:
    """One SFT jsonl line (UTF-8 kept as is, so the file is readable and byte-stable)."""
    return json.dumps({"messages": messages}, ensure_ascii=False) + "\n"


class SideBudget:
    """The running total of one side: first-fit in input order, never over its budget (0 = no cap)."""

    def __init__(self, max_tokens: int, max_examples: int, closed: bool = False) -> None:
        self.max_tokens = max_tokens
        self.max_examples = max_examples
        self.closed = closed
        """A side with no share of the budget takes nothing (a 0 budget otherwise means "no cap")."""
        self.tokens = 0
        self.examples = 0

    def take(self, tokens: int) -> bool:
        """Count an example of ``tokens`` tokens if it fits; return whether it did."""
        if self.closed:
            return False
        if self.max_examples and self.examples >= self.max_examples:
            return False
        if self.max_tokens and self.tokens + tokens > self.max_tokens:
            return False
        self.tokens += tokens
        self.examples += 1
        return True

    @property
    def full(self) -> bool:
        """Nothing more can fit (so reading further input is pointless for this side)."""
        return bool(
            self.closed
            or (self.max_examples and self.examples >= self.max_examples)
            or (self.max_tokens and self.tokens >= self.max_tokens)
        )

    def summary(self) -> dict[str, int]:
        """Budget and use, for the stats file."""
        return {
            "budget_tokens": self.max_tokens,
            "budget_examples": self.max_examples,
            "tokens": self.tokens,
            "examples": self.examples,
            "closed": self.closed,
        }


def split_budgets(max_tokens: int, max_examples: int, sft_fraction: float) -> tuple[SideBudget, SideBudget]:
    """``(pretrain, sft)`` budgets from the total reasoning budget; a 0 (no cap) stays 0 on both sides.

    When ``sft_fraction`` is 0 the SFT side is closed (it can take nothing); when it is 1 pretraining is.
    """

    def share(total: int) -> tuple[int, int]:
        sft = int(total * sft_fraction)
        return total - sft, sft

    pre_tok, sft_tok = share(max_tokens)
    pre_ex, sft_ex = share(max_examples)
    # A side with a zero share of a real budget must take nothing, not "no cap".
    sft_closed = sft_fraction == 0.0 or bool(max_tokens and not sft_tok) or bool(max_examples and not sft_ex)
    pre_closed = sft_fraction == 1.0 or bool(max_tokens and not pre_tok) or bool(max_examples and not pre_ex)
    return SideBudget(pre_tok, pre_ex, pre_closed), SideBudget(sft_tok, sft_ex, sft_closed)
