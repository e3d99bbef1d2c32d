"""The one entry point: ``smartpt <command> key=value ...`` (also ``python -m nemo_smartpt``).

Every command takes Hydra-grammar overrides (``key=value``, ``+key=value``, ``~key``; see
:mod:`nemo_smartpt.overrides`). A command lives in its own module that exposes ``main(args: list[str]) -> int``;
this file only dispatches, so ``smartpt --help`` stays fast (no Megatron import).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    issue: int


COMMANDS: dict[str, Command] = {
    "prepare": Command(
        "nemo_smartpt.reasoning.prepare_cli",
        "tokenize raw jsonl/parquet (text, OpenThoughts, Nemotron chat, mapped fields) into Megatron .bin/.idx",
        4,
    ),
    "plan": Command(
        "nemo_smartpt.blend.plan_cli",
        "read a source catalog and write a quality/epoch-aware multi-phase blend plan (JSON, table, PNG)",
        3,
    ),
    "catalog": Command(
        "nemo_smartpt.blend.catalog_cli",
        "write catalog.yaml from quality-labelled datasets (prepare group_by=FIELD; Curator / Nemotron-CC labels)",
        12,
    ),
    "train": Command(
        "nemo_smartpt.bridge.train_cli",
        "compose a Megatron-Bridge recipe + preset + overrides and run pretrain()",
        6,
    ),
    "eval": Command(
        "nemo_smartpt.evaluation.eval_cli",
        "score a run's checkpoint with lm-evaluation-harness (smartpt model adapter; lm-eval results JSON)",
        10,
    ),
    "demo": Command(
        "nemo_smartpt.demo",
        "CPU quickstart: bundled data -> prepare -> plan -> two-phase run with reasoning -> RLP -> report",
        6,
    ),
}

USAGE = """usage: smartpt <command> [key=value | +key=value | ~key ...]

commands:
{commands}

Overrides follow Hydra's grammar. `smartpt <command> --help` shows a command's settings and defaults.
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"smartpt: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from nemo_smartpt.bridge.console import install_console_filters

    install_console_filters()  # before any command imports megatron.bridge (logging only; no Megatron import here)
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name != command.module:
            raise
        print(
            f"smartpt {name}: not available yet in this version (tracked in issue #{command.issue}).",
            file=sys.stderr,
        )
        return 3
    from nemo_smartpt.overrides import OverrideError

    try:
        return int(module.main(args) or 0)
    except OverrideError as exc:
        print(f"smartpt {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
