"""The phased blend index: which component, and which position of its stream, serves every global sample.

Per phase, megatron-core's C++ ``build_blending_indices`` (the greedy "largest sampling error first" rule of
``BlendedDataset``) assigns each sample of the phase to a component and counts from 0 per component. Adding the
samples each component served in earlier phases turns that counter into a position in the component's whole-run
stream, which is what makes a source continue across phases. The two arrays are cached like ``BlendedDataset`` caches
its own: ``<md5>-PhasedDataset-train-{description.txt,dataset_index.npy,dataset_sample_index.npy,counts.npy}``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from megatron.core.datasets import helpers_cpp
from megatron.core.datasets.utils import normalize
from megatron.core.safe_globals import safe_numpy_load

logger = logging.getLogger(__name__)
# megatron-core stores the component of each sample as int16 (BlendedDataset asserts < 32767 datasets).
MAX_COMPONENTS = 32767


def rank0_first[T](build: Callable[[], T]) -> T:
    """Run ``build`` on rank 0, then on the other ranks, so they hit the caches rank 0 wrote (megatron-core's rule)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return build()
    rank = torch.distributed.get_rank()
    result = build() if rank == 0 else None
    torch.distributed.barrier()
    if rank != 0:
        result = build()
    return result


def build_phase_blend(
    weights: Sequence[Sequence[float]],
    phase_ends: Sequence[int],
    n_components: int,
    path_to_cache: str | None,
    digest: str,
    description: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build (or load from the cache) the phased blend index.

    Args:
        weights: per phase, per component weight (zeros allowed; each phase's positive weights are normalised).
        phase_ends: exclusive end sample of each phase.
        n_components: number of components.
        path_to_cache: cache directory, or ``None`` to build in memory.
        digest: md5 of ``description``, the cache key.
        description: JSON text that identifies the blend; written next to the arrays.

    Returns:
        ``dataset_index`` (int16 component per sample), ``dataset_sample_index`` (int64 stream position per sample)
        and ``counts`` (int64, shape ``(2, n_components)``): row 0 the samples each component serves in the run,
        row 1 the sum over phases of ``ceil(phase_samples * weight)``, megatron-core's sizing target.
    """
    if n_components > MAX_COMPONENTS:
        raise ValueError(f"{n_components} source prefixes; megatron-core's blend index holds at most {MAX_COMPONENTS}")
    paths = None
    if path_to_cache:
        stem = os.path.join(path_to_cache, f"{digest}-PhasedDataset-train-")
        paths = {
            k: stem + k for k in ("description.txt", "dataset_index.npy", "dataset_sample_index.npy", "counts.npy")
        }
        if all(os.path.isfile(p) for p in paths.values()):
            logger.info("Load the PhasedDataset blend index from %s*", stem)
            return tuple(  # type: ignore[return-value]
                safe_numpy_load(paths[k], allow_pickle=False, mmap_mode="r")
                for k in ("dataset_index.npy", "dataset_sample_index.npy", "counts.npy")
            )
    dataset_index, sample_index, counts = _build(weights, phase_ends, n_components)
    if paths is not None:
        os.makedirs(path_to_cache, exist_ok=True)
        # Write to temporary names and rename, so a rank that crashes mid-write leaves no half cache behind.
        for key, value in (
            ("dataset_index.npy", dataset_index),
            ("dataset_sample_index.npy", sample_index),
            ("counts.npy", counts),
        ):
            tmp = paths[key] + f".tmp{os.getpid()}.npy"
            np.save(tmp, value, allow_pickle=False)
            os.replace(tmp, paths[key])
        with open(paths["description.txt"], "w") as writer:
            writer.write(description)
    return dataset_index, sample_index, counts


def _build(
    weights: Sequence[Sequence[float]], phase_ends: Sequence[int], n_components: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    total = phase_ends[-1]
    dataset_index = np.empty(total, dtype=np.int16)
    sample_index = np.empty(total, dtype=np.int64)
    served = np.zeros(n_components, dtype=np.int64)
    ceil_target = np.zeros(n_components, dtype=np.int64)
    start = 0
    for row, end in zip(weights, phase_ends):
        # Zero-weight components must not reach the C++ helper: on a tie at error 0 it picks the lowest index.
        active = np.array([c for c, w in enumerate(row) if w > 0], dtype=np.int16)
        # Normalised twice, as the builder and then BlendedDataset do, so one phase matches megatron-core bit for bit.
        normalized = normalize([row[c] for c in active])
        blend_weights = normalize(normalized)
        size = end - start
        local_index = dataset_index[start:end]
        local_sample = sample_index[start:end]
        helpers_cpp.build_blending_indices(local_index, local_sample, blend_weights, len(active), size, False)
        phase_counts = np.bincount(local_index, minlength=len(active))
        # Map phase-local component ids to global ones and shift each counter past earlier phases' samples.
        np.take(active, local_index, out=local_index)
        local_sample += served[local_index]
        served[active] += phase_counts
        ceil_target[active] += [math.ceil(size * w) for w in normalized]
        start = end
    return dataset_index, sample_index, np.stack([served, ceil_target])
