"""A run directory that is safe to start, stop and resume: atomic writes, the resume guard, checkpoint scanning.

Rules (the README's "Resuming" section states them for users):

- Every file we write into a run directory appears whole or not at all (:func:`atomic_write_text`, and the plan
  directory is written beside its final name and renamed into place), so a SIGTERM or a kill at any moment never
  leaves a half-written config or plan.
- ``run_snapshot.json`` records the settings a run was started with (ours, Bridge's, the schedule and the derived
  catalog). A later command on the same directory must match it: any difference fails in one line naming the keys,
  unless ``resume.allow_changes`` lists them. A snapshot key matches a pattern when it equals it or lies under it
  (``train`` allows every ``train.*``); ``*`` wildcards work (``rlp.*``).
- Once ``plan/plan.json`` exists it is the run's plan: a resume reads it and never re-plans.
- Bridge writes a checkpoint's data first, then the tracker (``latest_train_state.pt``), then ``run_config.yaml``;
  a kill between those leaves a tracker that points at an incomplete checkpoint (Bridge then dies reading it).
  :func:`scan_checkpoints` finds the newest complete checkpoint, so the run can resume from it instead.

Pure logic (json, yaml, torch.load of small train-state files); no Megatron import.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SNAPSHOT = "run_snapshot.json"
ITER_DIR = re.compile(r"^iter_(\d{7})$")


class RunDirError(ValueError):
    """A run directory that a command must not touch (mismatched settings, no complete checkpoint)."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_dir(staging: Path, final: Path) -> bool:
    """Rename a fully written ``staging`` directory to ``final``. False (and ``staging`` removed) when another process
    of the same launch published it first: its content is the same, since planning is deterministic."""
    try:
        os.rename(staging, final)
        return True
    except OSError:
        if final.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise


# ------------------------------------------------------------------------------------------------ resume guard


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists -> ``{"a.b.c": json text}`` (lists stay one value: a changed list is one changed key)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                out.update(flatten(value, name + "."))
            else:
                out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def changed_keys(saved: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in saved.keys() | new.keys() if saved.get(k) != new.get(k))


def allowed(key: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if key == pattern or key.startswith(pattern + ".") or fnmatch.fnmatchcase(key, pattern):
            return True
    return False


@dataclass
class ResumeCheck:
    """What :func:`check_resume` found."""

    resuming: bool
    """A snapshot exists: this command continues an earlier one."""
    changed: list[str] = field(default_factory=list)
    """Keys that differ from the snapshot and were allowed by ``resume.allow_changes``."""


def check_resume(out: Path, snapshot: dict[str, str], allow_changes: list[str]) -> ResumeCheck:
    """Compare this command's settings with the run's snapshot; raise :class:`RunDirError` naming the differences."""
    path = out / SNAPSHOT
    if not path.exists():
        return ResumeCheck(resuming=False)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(
            f"{path} is unreadable ({exc}); move it away to start this run from its checkpoints"
        ) from None
    changed = changed_keys(saved, snapshot)
    refused = [k for k in changed if not allowed(k, allow_changes)]
    if refused:
        shown = ", ".join(_describe_change(k, saved, snapshot) for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise RunDirError(
            f"{out} holds a run started with other settings: {shown}{more}; use another out_dir, or continue it with "
            f"resume.allow_changes=[{','.join(refused)}]"
        )
    return ResumeCheck(resuming=True, changed=changed)


def _describe_change(key: str, saved: dict[str, str], new: dict[str, str]) -> str:
    def short(value):
        if value is None:
            return "unset"
        return value if len(value) <= 40 else value[:37] + "..."

    return f"{key} ({short(saved.get(key))} -> {short(new.get(key))})"


def write_snapshot(out: Path, snapshot: dict[str, str]) -> None:
    atomic_write_text(out / SNAPSHOT, json.dumps(snapshot, indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------------------ checkpoints


@dataclass
class CheckpointScan:
    """The checkpoints of a ``checkpoint.load`` directory."""

    latest: int | None
    """The iteration the tracker points at (Bridge resumes from it), or None without a tracker."""
    complete: int | None
    """The newest complete checkpoint, or None."""
    problems: dict[int, str] = field(default_factory=dict)
    """Incomplete checkpoints by iteration, with what is missing."""


def checkpoint_problem(directory: Path) -> str | None:
    """None when ``directory`` is a complete Bridge checkpoint, else what is wrong with it."""
    run_config = directory / "run_config.yaml"
    if not run_config.exists():
        return "run_config.yaml is missing"
    try:
        parsed = yaml.safe_load(run_config.read_text())
    except (OSError, yaml.YAMLError):
        parsed = None
    if not isinstance(parsed, dict):
        return "run_config.yaml is empty or cut short"
    if not (directory / "train_state.pt").exists():
        return "train_state.pt is missing"
    if (directory / "metadata.json").exists() and not (directory / ".metadata").exists():
        return "the distributed checkpoint has no .metadata (its save was interrupted)"
    return None


def _tracker_step(load_dir: Path) -> int | None:
    state = load_dir / "latest_train_state.pt"
    if state.exists():
        try:
            import torch

            loaded = torch.load(state, map_location="cpu", weights_only=False)
            step = loaded.get("step") if isinstance(loaded, dict) else None
            return int(step.item() if hasattr(step, "item") else step)
        except Exception:  # a tracker cut short by a kill: fall through to the legacy text tracker
            pass
    legacy = load_dir / "latest_checkpointed_iteration.txt"
    if legacy.exists():
        text = legacy.read_text().strip()
        if text.isdigit():
            return int(text)
    return None


def scan_checkpoints(load_dir: str | os.PathLike | None) -> CheckpointScan:
    if not load_dir or not Path(load_dir).is_dir():
        return CheckpointScan(latest=None, complete=None)
    load_dir = Path(load_dir)
    iterations = sorted(int(m.group(1)) for p in load_dir.iterdir() if (m := ITER_DIR.match(p.name)) and p.is_dir())
    latest = _tracker_step(load_dir)
    problems: dict[int, str] = {}
    complete = None
    for step in iterations:
        problem = checkpoint_problem(load_dir / f"iter_{step:07d}")
        if problem:
            problems[step] = problem
        elif latest is None or step <= latest:
            complete = step
    if latest is None and iterations:
        # No readable tracker (cut short while written): the newest complete checkpoint is the resume point.
        latest = complete
    return CheckpointScan(latest=latest, complete=complete, problems=problems)


def set_aside_incomplete(load_dir: Path, scan: CheckpointScan) -> list[str]:
    """Rename incomplete checkpoints newer than the resume point (``iter_N`` -> ``incomplete_iter_N``) so that the
    resumed run can save ``iter_N`` again; nothing is deleted. The new name must not start with ``iter_``: Bridge's
    ``most_recent_k`` clean-up parses every ``iter_*`` name as a number. Returns the new names."""
    moved = []
    for step in sorted(scan.problems):
        if scan.complete is not None and step <= scan.complete:
            continue
        source = load_dir / f"iter_{step:07d}"
        target = load_dir / f"incomplete_iter_{step:07d}"
        if source.is_dir() and not target.exists():
            try:
                os.rename(source, target)
            except FileNotFoundError:  # another rank of this launch moved it first
                continue
            moved.append(target.name)
    return moved
