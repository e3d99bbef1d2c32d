"""Run a function on N gloo processes, the way distributed code is tested on CPU.

``run_distributed(fn, world_size, *args)`` starts ``world_size`` fresh (spawned) processes on a free local port,
initialises a gloo process group in each, applies the CPU runtime, calls ``fn(rank, world_size, *args)`` and returns
the list of per-rank return values. A failure on any rank is raised in the caller with that rank's traceback. Process
groups (and megatron's model-parallel state) are destroyed in ``finally`` on every rank.

``fn`` must be importable by name (a module-level function): it is sent to the children as (module, qualname, path),
not pickled, so test modules imported by pytest's rootdir-relative machinery work too.

Results come back through files, not through a multiprocessing queue: each rank ``torch.save``s its outcome into a
private temporary directory (written under a temporary name, then renamed) before it exits, and the parent loads it
with ``map_location="cpu"`` once the process has finished. A queue would pickle tensors with torch's file-descriptor
sharing, which needs the sending process alive until the parent has received the descriptor; a rank that returns and
exits first made the parent fail with ``ConnectionResetError`` in ``multiprocessing.resource_sharer`` under load.
A file holds the bytes themselves, so nothing depends on which process exits first.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import socket
import sys
import tempfile
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


def _result_path(result_dir: str, rank: int) -> str:
    return os.path.join(result_dir, f"rank{rank}.pt")


def _write_result(result_dir: str, rank: int, status: str, value: Any) -> None:
    """Write ``(status, value)`` atomically: the parent never sees a half-written file."""
    import torch

    final = _result_path(result_dir, rank)
    partial = f"{final}.partial"
    try:
        torch.save((status, value), partial)
    except BaseException:  # an unpicklable return value is this rank's error, not a hang
        torch.save(("error", "the return value could not be saved:\n" + traceback.format_exc()), partial)
    os.replace(partial, final)


def _worker(
    ref, rank: int, world_size: int, port: int, sys_path: list[str], env: dict, cwd: str, result_dir: str, args, kwargs
) -> None:
    # A fork of the forkserver has the server's environment, directory and path: take the caller's, as spawn did.
    sys.path[:] = sys_path
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # The parent serves the rendezvous store on MASTER_PORT (run_distributed); every rank is its client.
        TORCHELASTIC_USE_AGENT_STORE="True",
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
        outcome = ("ok", fn(rank, world_size, *args, **kwargs))
    except BaseException:
        outcome = ("error", traceback.format_exc())
    try:
        _write_result(result_dir, rank, *outcome)
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:
            pass
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# Imported by the forkserver before it forks any rank (see rank_preload.py).
_PRELOAD = ["nemo_smartpt.testing.rank_preload"]


def _context() -> mp.context.BaseContext:
    """Ranks are forked from a forkserver that has already imported megatron (once per test process), not spawned.

    The server is a fresh interpreter started on the first call: it imports :data:`_PRELOAD`, runs nothing else, and
    holds no threads, process group or test state, so each rank still starts clean, as a spawned one did.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _read_result(result_dir: str, rank: int) -> tuple[str, Any] | None:
    import torch

    path = _result_path(result_dir, rank)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 600.0, **kwargs: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` gloo processes; return per-rank results.

    Raises:
        DistributedTestError: a rank raised (its traceback is in the message), died, or timed out.
    """
    import torch.distributed

    ctx = _context()
    result_dir = tempfile.mkdtemp(prefix="run_distributed-")
    # The rendezvous store is served from here, on a port the OS assigns as it binds, as torchrun's agent does. A port
    # picked by free_port() and bound by rank 0 seconds later (after its imports) could be taken in between by any
    # other test's connection; this one is held from the start.
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    port = store.port
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                _function_ref(fn),
                rank,
                world_size,
                port,
                list(sys.path),
                dict(os.environ),
                os.getcwd(),
                result_dir,
                args,
                kwargs,
            ),
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
            failed = False
            for rank, proc in enumerate(procs):
                if rank in outcome:
                    continue
                # The file is renamed into place complete, so it can be read while the rank is still tearing down.
                result = _read_result(result_dir, rank)
                if result is None and proc.exitcode is not None:
                    # exited without a result: killed, out of memory, os._exit before it could report
                    result = _read_result(result_dir, rank) or (
                        "error",
                        f"process died with exit code {proc.exitcode} (no traceback)",
                    )
                if result is not None:
                    outcome[rank] = result
                    failed = failed or result[0] == "error"
            if failed:
                break  # the other ranks may now block forever in a collective
            if len(outcome) < world_size:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(outcome))
                    raise DistributedTestError(f"timed out after {timeout:.0f}s waiting for ranks {missing}")
                mp.connection.wait([proc.sentinel for proc in procs if proc.exitcode is None], timeout=0.2)
        for proc in procs:
            proc.join(timeout=30 if len(outcome) == world_size else 5)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        shutil.rmtree(result_dir, ignore_errors=True)
        del store
    errors = {rank: value for rank, (status, value) in outcome.items() if status == "error"}
    if errors:
        text = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in sorted(errors.items()))
        raise DistributedTestError(f"{len(errors)} of {world_size} ranks failed:\n{text}")
    return [outcome[rank][1] for rank in range(world_size)]
