"""Run a function on N gloo processes, the way distributed code is tested on CPU.

``run_distributed(fn, world_size, *args)`` starts ``world_size`` fresh (spawned) processes on a free local port,
initialises a gloo process group in each, applies the CPU runtime, calls ``fn(rank, world_size, *args)`` and returns
the list of per-rank return values. A failure on any rank is raised in the caller with that rank's traceback. Process
groups (and megatron's model-parallel state) are destroyed in ``finally`` on every rank.

``fn`` must be importable by name (a module-level function): it is sent to the children as (module, qualname, path),
not pickled, so test modules imported by pytest's rootdir-relative machinery work too.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


class DistributedTestError(RuntimeError):
    """One or more ranks failed; the message holds each failing rank's traceback."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _function_ref(fn: Callable) -> tuple[str, str, str | None]:
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None)
    return fn.__module__, fn.__qualname__, path


def _resolve(ref: tuple[str, str, str | None]) -> Callable:
    module_name, qualname, path = ref
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if path is None:
            raise
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    target = module
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _worker(ref, rank: int, world_size: int, port: int, sys_path: list[str], results, args, kwargs) -> None:
    sys.path[:] = sys_path
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    import torch

    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    try:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
        fn = _resolve(ref)
        value = fn(rank, world_size, *args, **kwargs)
        # By value (plain pickle copies tensor data): torch's queue pickler would hand tensors over as shared-memory
        # file descriptors served by this process, which is gone when a loaded parent gets round to reading them.
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:
            pass
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 600.0, **kwargs: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` gloo processes; return per-rank results.

    Raises:
        DistributedTestError: a rank raised (its traceback is in the message), died, or timed out.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(_function_ref(fn), rank, world_size, port, list(sys.path), results, args, kwargs),
            daemon=False,
        )
        for rank in range(world_size)
    ]
    outcome: dict[int, tuple[str, Any]] = {}
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        while len(outcome) < world_size:
            try:
                rank, status, value = results.get(timeout=1.0)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if r not in outcome and p.exitcode not in (None, 0)]
                if dead:
                    for r in dead:
                        outcome[r] = ("error", f"process died with exit code {procs[r].exitcode} (no traceback)")
                    break
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(outcome))
                    raise DistributedTestError(f"timed out after {timeout:.0f}s waiting for ranks {missing}") from None
                continue
            outcome[rank] = (status, pickle.loads(value) if status == "ok" else value)
            if status == "error":
                break  # the other ranks may now block forever in a collective
        for proc in procs:
            proc.join(timeout=30 if len(outcome) == world_size else 5)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = {rank: value for rank, (status, value) in outcome.items() if status == "error"}
    if errors:
        text = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in sorted(errors.items()))
        raise DistributedTestError(f"{len(errors)} of {world_size} ranks failed:\n{text}")
    return [outcome[rank][1] for rank in range(world_size)]
