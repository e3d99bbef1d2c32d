"""Checks that run before step 1 (and before planning), so a run fails in one line instead of minutes later.

Each check raises :class:`~nemo_smartpt.overrides.OverrideError` (the CLI prints it as one line and exits 2) naming
the setting and what to do; the RLP row check fixes ``rlp.max_context`` itself when it can and says so. The save
interval policy lives here too: it decides from the final config, after every override.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path

from nemo_smartpt.overrides import OverrideError, parse_overrides

# Checkpoint at most this many steps apart unless the recipe or the user says otherwise. Sized for a 4-hour Slurm
# slot: an 8B model at 1M tokens per step on 8 H100s takes ~15 s per step, so 500 steps are ~2 hours of work at risk
# when a node dies (SIGTERM preemption saves on its way out regardless, see train.exit_signal_handler).
SAVE_INTERVAL_CAP = 500


# ------------------------------------------------------------------------------------------------ processes


def check_world_size(bridge, world_size: int | None = None) -> None:
    """The launched processes must hold whole model-parallel groups (TP x PP x CP)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    model = bridge.model
    tp = int(getattr(model, "tensor_model_parallel_size", 1) or 1)
    pp = int(getattr(model, "pipeline_model_parallel_size", 1) or 1)
    cp = int(getattr(model, "context_parallel_size", 1) or 1)
    need = tp * pp * cp
    if world % need:
        launch = "torchrun --nproc-per-node={n} -m nemo_smartpt train ..."
        raise OverrideError(
            f"model.tensor_model_parallel_size={tp} x pipeline_model_parallel_size={pp} x context_parallel_size={cp} "
            f"needs {need} processes (or a multiple); this launch has {world}: launch with {launch.format(n=need)}"
        )


# ------------------------------------------------------------------------------------------------ paths


def check_paths(cfg, bridge) -> None:
    """Files the run reads later, checked now: a missing one fails before planning, not after model set-up."""
    pretrained = getattr(bridge.checkpoint, "pretrained_checkpoint", None)
    if pretrained and not Path(pretrained).exists():
        raise OverrideError(f"checkpoint.pretrained_checkpoint: no such directory {pretrained}")
    if cfg.data.tokenizer != "byte" and not Path(cfg.data.tokenizer).exists():
        raise OverrideError(f"data.tokenizer: no such tokenizer directory or file {cfg.data.tokenizer}")
    tokenizer_model = getattr(getattr(bridge, "tokenizer", None), "tokenizer_model", None)
    if isinstance(tokenizer_model, str) and tokenizer_model.startswith(("/", "./", "../", "~")):
        if not Path(tokenizer_model).expanduser().exists():
            raise OverrideError(f"tokenizer.tokenizer_model: no such path {tokenizer_model}")
    if cfg.data.plan and not Path(cfg.data.plan).exists():
        raise OverrideError(f"data.plan: no such file {cfg.data.plan}")
    if cfg.data.catalog != "bundled" and not cfg.data.plan and not Path(cfg.data.catalog).exists():
        raise OverrideError(f"data.catalog: no such file {cfg.data.catalog}")
    # eval.tasks are lm-eval task names (the world's, or any in lm-eval's registry), checked by lm-eval itself;
    # a folder of task YAMLs given by path must exist.
    if cfg.eval.enabled and cfg.eval.include_path and not Path(cfg.eval.include_path).is_dir():
        raise OverrideError(f"eval.include_path: no such directory {cfg.eval.include_path}")


# ------------------------------------------------------------------------------------------------ RLP rows


def rlp_row_tokens(rlp, layout, max_context: int | None = None) -> int:
    """Longest scoring row: prompt + context + <think> + thought + </think> (as the RLP preparer lays it out)."""
    context = rlp.max_context if max_context is None else max_context
    fixed = len(layout.prompt_ids) + len(layout.think_open_ids) + len(layout.think_close_ids)
    return fixed + context + rlp.max_thought_tokens


def fit_rlp_context(rlp, layout, bridge, may_change: bool) -> str | None:
    """Make every RLP scoring row fit the model's learned position table (``model.seq_length`` slots).

    Lowers ``rlp.max_context`` when ``may_change`` (it was not set explicitly) and returns the log line that says so;
    raises naming the keys and numbers when it cannot. Rotary models have no position table: nothing to check.
    """
    if getattr(bridge.model, "position_embedding_type", "learned_absolute") != "learned_absolute":
        return None
    seq = int(bridge.model.seq_length)
    longest = rlp_row_tokens(rlp, layout)
    if longest <= seq:
        return None
    fixed = len(layout.prompt_ids) + len(layout.think_open_ids) + len(layout.think_close_ids)
    parts = (
        f"prompt {len(layout.prompt_ids)} + rlp.max_context {rlp.max_context} + think tags "
        f"{len(layout.think_open_ids) + len(layout.think_close_ids)} + rlp.max_thought_tokens {rlp.max_thought_tokens}"
    )
    fitted = seq - fixed - rlp.max_thought_tokens
    if may_change and fitted >= rlp.min_context:
        old = rlp.max_context
        rlp.max_context = fitted
        return (
            f"rlp.max_context {old} -> {fitted}: an RLP scoring row ({parts} = {longest} tokens) must fit "
            f"model.seq_length={seq} (set rlp.max_context or model.seq_length to choose)"
        )
    raise OverrideError(
        f"rlp: a scoring row holds {parts} = {longest} tokens but model.seq_length={seq}; lower rlp.max_context to "
        f"{max(fitted, 0)} or less (rlp.min_context={rlp.min_context}), lower rlp.max_thought_tokens, or raise "
        "model.seq_length"
    )


# ------------------------------------------------------------------------------------------------ checkpoints


def choose_save_interval(current: int | None, total_steps: int) -> int:
    """The recipe's interval when it saves at least once before the end of the run, else half the run, at most
    :data:`SAVE_INTERVAL_CAP` steps apart."""
    if current and 0 < int(current) < total_steps:
        return int(current)
    return max(1, min(SAVE_INTERVAL_CAP, math.ceil(total_steps / 2)))


# ------------------------------------------------------------------------------------------------ override types


def check_override_types(bridge, overrides: list[str]) -> None:
    """Bridge's override parser assigns any value to any field (``train.train_iters=abc`` becomes the string "abc" and
    fails deep inside training); check each overridden scalar against its dataclass field's annotation."""
    for override in parse_overrides(overrides):
        if override.is_delete():
            continue
        key = override.key_or_group
        *parents, name = key.split(".")
        owner = bridge
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is None or not dataclasses.is_dataclass(owner):
            continue
        try:
            hints = typing.get_type_hints(type(owner))
        except Exception:  # forward references to optional packages: nothing to check against
            continue
        if name not in hints:
            continue
        value = getattr(owner, name, None)
        expected = _scalar_types(hints[name])
        if expected is None or _matches(value, expected):
            continue
        names = " or ".join(sorted({_type_name(t) for t in expected}))
        raise OverrideError(f"{key}={override.value()!r}: expected {names}")


def _scalar_types(hint) -> tuple | None:
    """The allowed scalar types/literals of a hint, or None when the hint is not a plain scalar one."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out: list = []
        for arg in typing.get_args(hint):
            sub = _scalar_types(arg)
            if sub is None:
                return None
            out.extend(sub)
        return tuple(out)
    if origin is typing.Literal:
        return tuple(("literal", v) for v in typing.get_args(hint))
    if hint in (int, float, str, bool, type(None)):
        return (hint,)
    return None


def _matches(value, expected: tuple) -> bool:
    for kind in expected:
        if isinstance(kind, tuple) and kind[0] == "literal":
            if value == kind[1]:
                return True
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        elif kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif kind in (str, bool, type(None)) and isinstance(value, kind):
            return True
    return False


def _type_name(kind) -> str:
    if isinstance(kind, tuple):
        return repr(kind[1])
    return "null" if kind is type(None) else kind.__name__
