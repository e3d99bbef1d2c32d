"""Tiny Megatron indexed datasets (``.bin``/``.idx``) written with megatron-core's own ``IndexedDatasetBuilder``.

The synthetic documents are learnable (each is an arithmetic progression of token ids modulo the vocabulary with a
per-document start and step), so a tiny model's loss visibly falls within a few iterations, and each document's first
token encodes its index, so a test can recover which document a sample came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def write_indexed_dataset(prefix: str | Path, documents: Iterable[Sequence[int]], dtype=np.int32) -> str:
    """Write documents (lists of token ids, EOD included if wanted) as ``prefix.bin`` / ``prefix.idx``.

    Returns:
        The prefix as a string (what megatron-core's dataset configs take).
    """
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in documents:
        ids = torch.as_tensor(np.asarray(doc, dtype=np.int64))
        builder.add_document(ids, [len(ids)])
    builder.finalize(prefix + ".idx")
    return prefix


def progression_documents(
    num_docs: int,
    vocab_size: int,
    eod: int,
    min_len: int = 8,
    max_len: int = 48,
    seed: int = 0,
    step_choices=(1, 2, 3),
) -> list[list[int]]:
    """Learnable synthetic documents: ``start, start+k, start+2k, ...`` (mod the usable vocabulary), then EOD.

    Token ``eod`` is never used inside a document. Lengths are uniform in ``[min_len, max_len]``.
    """
    rng = np.random.default_rng(seed)
    usable = [t for t in range(vocab_size) if t != eod]
    docs = []
    for _ in range(num_docs):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, len(usable)))
        step = int(rng.choice(step_choices))
        body = [usable[(start + i * step) % len(usable)] for i in range(length)]
        docs.append([*body, eod])
    return docs
