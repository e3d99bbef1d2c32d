"""The world's tokenizer: a small byte-level BPE trained with Hugging Face ``tokenizers`` on the training text.

Byte-level, so any text (including the held-out phrasings, which training never uses) encodes without unknown
tokens; small (``WorldSpec.tokenizer_vocab``, 2048 by default), so that each name and number of the world is one or
two tokens and a model of width 128 spends little on its embedding. Saved with ``transformers``'
``PreTrainedTokenizerFast.save_pretrained``: the directory layout Megatron-Bridge's ``HuggingFaceTokenizer`` (and
``smartpt prepare tokenizer=DIR``) loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN, "<think>", "</think>")
"""``<think>``/``</think>`` are single tokens: ``prepare`` renders every thought between them and RLP inserts them."""


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int) -> Path:
    """Train a byte-level BPE on ``texts`` and save it under ``out_dir`` (``tokenizer.json`` + configs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out = Path(out_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD_TOKEN, pad_token=PAD_TOKEN)
    fast.save_pretrained(out)
    return out
