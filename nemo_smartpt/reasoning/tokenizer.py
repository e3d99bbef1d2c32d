"""Tokenizers for ``prepare``: a Hugging Face ``tokenizers`` file from a local path, or a built-in byte tokenizer.

Both expose the small interface the rest of the package (and megatron-core's ``GPTDataset``) needs:
``encode_batch(texts) -> list[list[int]]``, ``vocab_size``, ``eod``, ``pad`` and ``unique_identifiers``;
``encode_arrays`` is the same as ``encode_batch`` but returns numpy arrays, which is what the writer stores.

``tokenizer=byte`` (the default) needs no file and no network: ids 0-255 are the UTF-8 bytes, 256 is EOD and 257 is
PAD (vocab 258). Anything else is a path to a ``tokenizer.json`` file or a directory holding one (the layout of every
Hugging Face model repo); no ``transformers`` import, so workers start fast.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Protocol

import numpy as np

from nemo_smartpt.reasoning.errors import ReasoningDataError

BYTE_TOKENIZER = "byte"
EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<EOS>", "<|im_end|>")
"""Tried in order when ``eod_token`` is not given: the end-of-document tokens of common model families."""


class TokenizerError(ReasoningDataError):
    """The tokenizer cannot be loaded or has no end-of-document token."""


class Tokenizer(Protocol):
    """What ``prepare`` and megatron-core's datasets use of a tokenizer."""

    vocab_size: int
    eod: int
    pad: int

    @property
    def unique_identifiers(self) -> OrderedDict: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids, plus EOD and PAD: an offline default that round-trips any text exactly."""

    vocab_size = 258
    eod = 256
    pad = 257

    @property
    def unique_identifiers(self) -> OrderedDict:
        """Identity used by megatron-core's dataset cache keys."""
        return OrderedDict([("class", f"{type(self).__module__}.{type(self).__qualname__}")])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no EOD)."""
        return [list(text.encode("utf-8")) for text in texts]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Like :meth:`encode_batch`, as uint8 arrays (no Python int per token, which is most of the cost)."""
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special ids are dropped."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer from a local ``tokenizer.json``.

    Args:
        path: the ``tokenizer.json`` file or a directory that holds one.
        eod_token: the end-of-document token; empty = the first of :data:`EOD_CANDIDATES` the vocabulary has.
    """

    def __init__(self, path: str, eod_token: str = "") -> None:
        from tokenizers import Tokenizer as _Tokenizer

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise TokenizerError(f"tokenizer {path!r}: no such file (want a tokenizer.json or a directory with one)")
        try:
            self._tok = _Tokenizer.from_file(file)
        except Exception as exc:  # the Rust side raises a bare Exception for a bad file
            raise TokenizerError(f"tokenizer {file}: cannot load: {exc}") from None
        self.path = file
        candidates = (eod_token,) if eod_token else EOD_CANDIDATES
        ids = [(tok, self._tok.token_to_id(tok)) for tok in candidates]
        found = [(tok, i) for tok, i in ids if i is not None]
        if not found:
            raise TokenizerError(
                f"tokenizer {file}: no end-of-document token among {list(candidates)}; set eod_token=..."
            )
        self.eod_token, self.eod = found[0]
        pad_ids = [self._tok.token_to_id(t) for t in ("<pad>", "<|pad|>", "[PAD]")]
        pad = next((i for i in pad_ids if i is not None), None)
        # Megatron masks PAD out of the loss; without a dedicated pad token EOD is the usual stand-in.
        self.pad = pad if pad is not None else self.eod
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        # encode_batch_fast skips character offsets we never use; older tokenizers lack it.
        self._encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    @property
    def unique_identifiers(self) -> OrderedDict:
        """Identity used by megatron-core's dataset cache keys."""
        return OrderedDict(
            [("class", f"{type(self).__module__}.{type(self).__qualname__}"), ("path", self.path), ("eod", self.eod)]
        )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without the tokenizer's own special tokens (no BOS/EOS; EOD is added later)."""
        return [enc.ids for enc in self._encode(texts, add_special_tokens=False)]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Like :meth:`encode_batch`, as int64 arrays."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``."""
        return self._tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(spec: str, eod_token: str = "") -> ByteTokenizer | HFTokenizer:
    """``byte`` for the built-in tokenizer, else a local path to a Hugging Face ``tokenizer.json``."""
    if spec == BYTE_TOKENIZER:
        if eod_token:
            raise TokenizerError("eod_token only applies to a Hugging Face tokenizer, not tokenizer=byte")
        return ByteTokenizer()
    return HFTokenizer(spec, eod_token)
