"""What ``prepare`` may write, and how it writes it so that nothing a user owns is lost.

Rules, all checked before the first record is read:

- ``output_prefix`` names a file prefix, not a directory (``out/`` would write the hidden ``out/.bin``);
- no output (dataset, stats, skipped log, SFT jsonl) is one of the input or decontamination files;
- an existing dataset under the prefix (any of ``.bin .idx .stats.json .skipped.jsonl .sft.jsonl``) is refused
  unless ``overwrite=true``; with it, the files of the old run that this run does not write are removed when the new
  one is committed, so no stale sidecar of the old run survives beside the new dataset;
- temporary files of an earlier run on the same prefix (``<final>.partial-<pid>``) are removed and named when their
  process is gone (SIGKILL, power loss); a live process writing the same prefix is refused.

Every output is written under ``<final>.partial-<pid>`` and renamed only when the whole run succeeded (the ``.idx``
last, since it is what makes the pair a dataset). SIGTERM and SIGHUP (Slurm, ``timeout``, ``docker stop``, a closed
terminal) are turned into :class:`Interrupted`, a ``KeyboardInterrupt``, so they clean up exactly as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import threading
from collections.abc import Iterable, Iterator

from nemo_smartpt.reasoning.errors import ReasoningDataError

SIDECAR_SUFFIXES = (".bin", ".idx", ".stats.json", ".skipped.jsonl", ".sft.jsonl")
"""Everything a prepare run writes under a prefix; an old run's file of this family is part of that old dataset."""

_PARTIAL = ".partial-"


class OutputPathError(ReasoningDataError):
    """An output path that would lose data (an input, an existing dataset, a directory) or is in use."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; ``signum`` says which (the CLI exits with 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check_prefix(prefix: str, setting: str = "output_prefix") -> None:
    """Refuse a prefix that is a directory or ends like one."""
    name = os.path.basename(prefix)
    if prefix.endswith(("/", os.sep)) or os.path.isdir(prefix) or name in ("", ".", ".."):
        raise OutputPathError(
            f"{setting}={prefix!r} is a directory; give a file prefix inside it, e.g. {setting}="
            f"{os.path.join(prefix.rstrip('/' + os.sep) or '.', 'dataset')}"
        )


def check_not_inputs(outputs: dict[str, str], inputs: Iterable[str], setting_of: dict[str, str]) -> None:
    """Refuse any output that is one of the input files (it would be replaced by the run that reads it)."""
    real_inputs = {os.path.realpath(p): p for p in inputs}
    for role, path in outputs.items():
        if os.path.realpath(path) in real_inputs:
            setting = setting_of.get(role, "output_prefix")
            raise OutputPathError(
                f"{setting}: output {path} is the input file {real_inputs[os.path.realpath(path)]}; "
                f"writing it would destroy the data being read - choose another {setting}"
            )


def family(prefix: str) -> list[str]:
    """The files a prepare run may have written under ``prefix``."""
    return [prefix + suffix for suffix in SIDECAR_SUFFIXES]


def check_existing(prefixes: Iterable[str], outputs: Iterable[str], overwrite: bool) -> list[str]:
    """Refuse existing outputs unless ``overwrite``; return the old files this run will replace or remove."""
    existing = sorted({p for prefix in prefixes for p in family(prefix) + list(outputs) if os.path.exists(p)})
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputPathError(
            f"output_prefix: {shown} already exist(s) (an earlier dataset); pass overwrite=true to replace it, "
            f"or choose another output_prefix"
        )
    return existing


def remove_stale_partials(finals: Iterable[str]) -> list[str]:
    """Remove ``<final>.partial-<pid>`` files whose process is gone; refuse if a live process owns one."""
    removed = []
    for final in finals:
        for path in sorted(glob.glob(glob.escape(final) + _PARTIAL + "*")):
            pid_text = path.rsplit(_PARTIAL, 1)[1]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if pid != os.getpid() and _alive(pid):
                raise OutputPathError(
                    f"output_prefix: {path} is being written by process {pid}, still running; wait for it or "
                    f"choose another output_prefix"
                )
            os.remove(path)
            removed.append(path)
    return removed  # the caller reports them (the CLI prints each, the stats list them)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class AtomicOutputs:
    """Temporary names for a set of final paths; :meth:`commit` renames them all, :meth:`discard` removes them."""

    def __init__(self, finals: dict[str, str]) -> None:
        self.finals = finals
        self.temps = {role: f"{path}{_PARTIAL}{os.getpid()}" for role, path in finals.items()}

    def __getitem__(self, role: str) -> str:
        return self.temps[role]

    def add(self, role: str, final: str) -> str:
        """Register one more final path (a ``group_by`` dataset seen for the first time); return its temp name."""
        self.finals[role] = final
        self.temps[role] = f"{final}{_PARTIAL}{os.getpid()}"
        return self.temps[role]

    def leftovers(self, stale: Iterable[str]) -> list[str]:
        """The ``stale`` old files this run does not replace (what :meth:`commit` will remove)."""
        finals = set(self.finals.values())
        return sorted({p for p in stale if p not in finals and os.path.exists(p)})

    def commit(self, stale: Iterable[str] = ()) -> list[str]:
        """Rename every temporary file to its final name (the index last), after removing ``stale`` old files that
        this run does not replace. Returns the removed paths."""
        # A stale index goes first: were we stopped half-way, no old .idx would pair with a new .bin.
        leftovers = self.leftovers(stale)
        for path in sorted(leftovers, key=lambda p: not p.endswith(".idx")):
            os.remove(path)
        for role in sorted(self.finals, key=lambda r: r.split(":")[0] == "idx"):
            os.replace(self.temps[role], self.finals[role])
        return leftovers

    def discard(self) -> None:
        """Remove whatever temporary files exist."""
        for path in self.temps.values():
            if os.path.exists(path):
                os.remove(path)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What Ctrl-C, ``timeout``/Slurm/``docker stop`` and a closed terminal send: each stops a run cleanly."""


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` like SIGINT does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP for the block: one that arrives meanwhile takes effect at its end.

    For starting a process pool. A Python handler that raises while a worker is being spawned cuts the pipe that
    carries the worker its start-up data (the worker dies with ``EOFError`` in ``spawn_main``), and the started workers
    would have no one to stop them. Blocking the signals in this thread is not enough: the kernel hands a
    process-directed signal to any thread that does not block it (torch and the tokenizers start their own), and
    CPython then runs the Python handler in the main thread all the same. So the Python handlers are swapped for
    recorders too. The mask stays as well: spawned children inherit it, so a Ctrl-C to the process group cannot
    reach a worker before its initializer decides what to do with it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous_handlers = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in STOP_SIGNALS}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        # Unmask first: a signal the kernel held for this thread is then delivered to the recorder, not lost.
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        for s, old in previous_handlers.items():
            signal.signal(s, old)
    if arrived:
        signal.raise_signal(arrived[0])  # now through the handler the caller had installed


def quiet_worker_signals() -> None:
    """In a worker: the parent decides about SIGINT/SIGHUP (Ctrl-C reaches the whole process group) and stops the
    worker with SIGTERM, whose default action ends it without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The parent starts the pool with these blocked (see signals_held) and a spawned child inherits the mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
