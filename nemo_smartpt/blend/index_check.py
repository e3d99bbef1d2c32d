"""Validate a Megatron ``.idx``/``.bin`` pair completely, with vectorised numpy, before anything trusts it.

megatron-core's ``IndexedDataset`` checks the header with ``assert`` and trusts the arrays: a flipped byte in a
sequence pointer passes ``smartpt plan`` and crashes the run thousands of samples later (``offset must be
non-negative``). :func:`validate_index` reads the three arrays of the ``.idx`` as numpy views of one memory map and
checks, in a few passes over memory:

- the header (magic, version 1, a known dtype code) and that the file size is exactly what the counts promise;
- sequence lengths are non-negative;
- sequence pointers start at 0 and each is the previous one plus the previous length in bytes (so they are
  monotonic and the sequences tile the ``.bin`` without gaps or overlaps), and the last sequence ends exactly at the
  end of the ``.bin``;
- the document index starts at 0, never decreases, and ends at the sequence count.

Cost: ~3 passes over 20 bytes per sequence (``benchmarks/bench_phased_dataset.py --index-check`` measures it on a
10-million-document index). No Megatron import: ``smartpt plan`` and ``smartpt catalog`` stay light.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document-index length
ITEMSIZE_BY_CODE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core's DType codes


class IndexValidationError(ValueError):
    """A missing, truncated or inconsistent ``.idx``/``.bin`` pair; the message names the file and the fault."""


@dataclass
class IndexSummary:
    """What a validated index holds (copies, not views: the memory map is closed on return)."""

    sequence_lengths: np.ndarray
    """Tokens of every sequence (one sequence per document in GPT data)."""
    documents: int
    """Documents (the document index's length minus one)."""
    itemsize: int
    """Bytes per token in the ``.bin``."""

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def validate_index(prefix: str) -> IndexSummary:
    """Check ``<prefix>.idx`` against itself and ``<prefix>.bin``; return its lengths and counts.

    Raises:
        IndexValidationError: a file is missing, or any rule of the module docstring is broken.
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise IndexValidationError(f"missing {path} (prefix {prefix!r})")
    size, bin_size = os.path.getsize(idx_path), os.path.getsize(bin_path)
    with open(idx_path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise IndexValidationError(f"corrupt index {idx_path}: {size} bytes, shorter than the header")
    magic, version, code, sequences, doc_entries = HEADER.unpack(head)
    if magic != INDEX_MAGIC or version != 1 or code not in ITEMSIZE_BY_CODE:
        raise IndexValidationError(
            f"corrupt index {idx_path}: not a Megatron .idx (magic {magic!r}, version {version}, dtype code {code})"
        )
    itemsize = ITEMSIZE_BY_CODE[code]
    expected = HEADER.size + 12 * sequences + 8 * doc_entries
    if size != expected or doc_entries < 1:
        raise IndexValidationError(
            f"corrupt index {idx_path}: {size} bytes, but its header ({sequences} sequences, {doc_entries} "
            f"document-index entries) needs exactly {expected}"
        )
    if sequences == 0:
        if bin_size:
            raise IndexValidationError(f"{bin_path} has {bin_size} bytes but {idx_path} lists no sequence")
        return IndexSummary(np.zeros(0, dtype=np.int32), doc_entries - 1, itemsize)
    mm = np.memmap(idx_path, dtype=np.uint8, mode="r")
    try:
        lengths = np.frombuffer(mm, dtype=np.int32, count=sequences, offset=HEADER.size)
        pointers = np.frombuffer(mm, dtype=np.int64, count=sequences, offset=HEADER.size + 4 * sequences)
        doc_index = np.frombuffer(mm, dtype=np.int64, count=doc_entries, offset=HEADER.size + 12 * sequences)
        _check_arrays(idx_path, bin_path, bin_size, itemsize, lengths, pointers, doc_index, sequences)
        lengths = lengths.copy()
    finally:
        mm._mmap.close()
    return IndexSummary(lengths, doc_entries - 1, itemsize)


def _check_arrays(idx_path, bin_path, bin_size, itemsize, lengths, pointers, doc_index, sequences) -> None:
    def first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    if lengths.min() < 0:
        i = first(lengths < 0)
        raise IndexValidationError(f"corrupt index {idx_path}: sequence {i} has negative length {lengths[i]}")
    if pointers[0] != 0:
        raise IndexValidationError(f"corrupt index {idx_path}: the first sequence pointer is {pointers[0]}, not 0")
    # pointer[i+1] == pointer[i] + length[i] * itemsize: monotonic, no gap, no overlap (int64: no overflow below 2**63)
    step = np.diff(pointers)
    bad = step != lengths[:-1].astype(np.int64) * itemsize
    if bad.any():
        i = first(bad) + 1
        raise IndexValidationError(
            f"corrupt index {idx_path}: sequence pointer {i} is {pointers[i]}, but sequence {i - 1} ends at byte "
            f"{pointers[i - 1] + int(lengths[i - 1]) * itemsize}"
        )
    end = int(pointers[-1]) + int(lengths[-1]) * itemsize
    if end != bin_size:
        raise IndexValidationError(
            f"{bin_path} has {bin_size} bytes but {idx_path} describes {end} (truncated or mismatched pair)"
        )
    if doc_index[0] != 0 or doc_index[-1] != sequences:
        raise IndexValidationError(
            f"corrupt index {idx_path}: the document index runs from {doc_index[0]} to {doc_index[-1]}, "
            f"not from 0 to the sequence count {sequences}"
        )
    if len(doc_index) > 1:
        bad = np.diff(doc_index) < 0
        if bad.any():
            i = first(bad) + 1
            raise IndexValidationError(f"corrupt index {idx_path}: document index entry {i} decreases")
