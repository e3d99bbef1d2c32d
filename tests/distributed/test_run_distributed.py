"""The gloo test harness itself: results with tensors come back whole, failures and deaths are named per rank.

Ranks return their results through files (``torch.save`` then rename), so a rank that returns tensors and exits at
once cannot break the parent's read (torch's fd sharing through a queue did, under load).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from nemo_smartpt.testing.distributed import DistributedTestError, run_distributed

pytestmark = [pytest.mark.distributed]


def _tensors(rank, world_size, n):
    value = torch.full((n,), float(rank + 1))
    torch.distributed.all_reduce(value)  # a real collective: every rank sees the sum
    # many tensors and storages sharing views: each used to be one fd handed over through resource_sharer
    return {"sum": value, "views": [value[i : i + 3] for i in range(0, 30, 3)], "np": np.arange(rank, rank + 4)}


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("rank one refuses")
    torch.distributed.barrier()  # rank 0 would wait here forever; the harness must not
    return rank


def _die_on_rank_one(rank, world_size):
    if rank == 1:
        os._exit(3)
    torch.distributed.barrier()
    return rank


def test_tensor_results_survive_ranks_that_exit_first():
    results = run_distributed(_tensors, 2, 50_000, timeout=300)
    for rank, result in enumerate(results):
        assert torch.equal(result["sum"], torch.full((50_000,), 3.0))
        assert [v.tolist() for v in result["views"]] == [[3.0] * 3] * 10
        np.testing.assert_array_equal(result["np"], np.arange(rank, rank + 4))


def test_a_failing_rank_is_reported_with_its_traceback():
    with pytest.raises(DistributedTestError, match=r"(?s)--- rank 1 ---.*ValueError: rank one refuses"):
        run_distributed(_fail_on_rank_one, 2, timeout=300)


def test_a_rank_that_dies_is_named_with_its_exit_code():
    with pytest.raises(DistributedTestError, match="rank 1 ---\nprocess died with exit code 3"):
        run_distributed(_die_on_rank_one, 2, timeout=300)
