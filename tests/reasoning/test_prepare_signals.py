"""Real signals to a running ``smartpt prepare`` (two workers): what Slurm, ``timeout``, ``docker stop`` and a closed
terminal send.

SIGTERM and SIGHUP must clean up like Ctrl-C (no partial file, exit 128 + signal), with quiet workers (no BrokenPipe
traceback, no leaked semaphore). SIGKILL cannot be handled: the next run on the same prefix removes the dead run's
partial files and names them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("signals") / "big.jsonl"
    line = '{"text": "' + "a plain sentence of text, long enough to take a while to tokenize. " * 8 + '"}\n'
    path.write_text(line * 200_000)
    return str(path)


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-m", "nemo_smartpt", "prepare", *args, "progress=false"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as under Slurm: the test can tell its workers apart
    )


def wait_for_partial(directory: Path, proc: subprocess.Popen) -> None:
    """Until the run has started writing (its partial files exist); generous, as CI machines are slow."""
    deadline = time.monotonic() + 600
    while not list(directory.glob("*.partial-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.2)


def live_members(pgid: int) -> list[int]:
    """Processes of the group that still run (exited ones may linger as zombies until init reaps them)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(pgrp) == pgid and state != "Z":
            live.append(int(entry))
    return live


def live_workers(pgid: int) -> list[int]:
    """Live pool workers of the group (multiprocessing's resource tracker exits on its own, a moment later)."""
    workers = []
    for pid in live_members(pgid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    return workers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_clean_up_like_ctrl_c(tmp_path, big_input, sig):
    proc = start([f"input={big_input}", "format=text", f"output_prefix={tmp_path / 'ds'}", "workers=2"])
    wait_for_partial(tmp_path, proc)
    proc.send_signal(sig)  # to the parent only, as `timeout` and `docker stop` do
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert f"interrupted (signal {int(sig)}); no output written" in err
    for noise in ("Traceback", "BrokenPipe", "leaked semaphore", "resource_tracker"):
        assert noise not in err, err
    assert os.listdir(tmp_path) == []
    assert live_workers(proc.pid) == []  # the workers were stopped too


def test_partial_files_of_a_killed_run_are_removed_and_named_by_the_next(tmp_path, big_input):
    prefix = tmp_path / "ds"
    proc = start([f"input={big_input}", "format=text", f"output_prefix={prefix}", "workers=2"])
    wait_for_partial(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as Slurm does at the time limit
    proc.communicate(timeout=600)
    left = sorted(p.name for p in tmp_path.glob("*.partial-*"))
    assert left and all(name.endswith(f".partial-{proc.pid}") for name in left)
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "one document"}\n')
    again = start([f"input={small}", "format=text", f"output_prefix={prefix}"])
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    for name in left:
        assert f"removed {tmp_path / name}, left by an interrupted earlier run" in err
    assert not list(tmp_path.glob("*.partial-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ds.bin",
        "ds.idx",
        "ds.skipped.jsonl",
        "ds.stats.json",
        "small.jsonl",
    ]


def test_a_signal_taken_by_another_thread_waits_for_the_end_of_signals_held():
    """The CI failure this guards: SIGTERM arrived while the pool spawned a worker. The main thread had the signal
    blocked, but torch's own thread did not, took it, and CPython ran the raising handler in the main thread anyway,
    cutting the pipe to the half-started worker (``EOFError`` in ``spawn_main``). A thread started before the block
    plays torch's thread here: it is the only one that can take the signal."""
    from nemo_smartpt.reasoning.outputs import Interrupted, signals_as_interrupts, signals_held

    ready, sent = threading.Event(), threading.Event()

    def other_thread():
        ready.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # process-directed, as from `timeout` or Slurm
        sent.set()

    inside_finished = False
    helper = threading.Thread(target=other_thread)
    helper.start()  # before the block, so its mask is the default one: it may take the signal
    with signals_as_interrupts(), pytest.raises(Interrupted) as raised:
        with signals_held():
            ready.set()
            assert sent.wait(10)
            for _ in range(200):  # bytecode boundaries and sleeps, where a pending Python handler would run
                time.sleep(0.001)
            inside_finished = True
    helper.join()
    assert inside_finished
    assert raised.value.signum == signal.SIGTERM
