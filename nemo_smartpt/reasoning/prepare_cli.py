"""``smartpt prepare key=value ...``: the command-line face of :func:`nemo_smartpt.reasoning.prepare.prepare`.

Example (OpenThoughts jsonl -> SHQ selection -> 80% pretraining indexed dataset + 20% SFT chat jsonl)::

    smartpt prepare input='data/ot/*.jsonl' output_prefix=out/shq format=openthoughts selection=shq \\
        select.max_tokens=1000000 split.sft_fraction=0.2 workers=2

Errors a user can fix (bad override, missing file, malformed record with ``on_error=fail``, an output that would
overwrite an input or an existing dataset, zero documents) print one line naming the field, file and line, and return
a non-zero code; no traceback. SIGINT, SIGTERM and SIGHUP remove the partial files and exit with 128 + the signal.
"""

from __future__ import annotations

import sys

from nemo_smartpt.overrides import describe
from nemo_smartpt.reasoning.config import PrepareConfig

EXIT_USAGE, EXIT_DATA = 2, 1


def help_text() -> str:
    """Every field of ``PrepareConfig`` (nested settings under their dotted prefix) with default and docstring."""
    return describe(PrepareConfig)


def main(args: list[str]) -> int:
    """Parse overrides, run ``prepare``, print a one-paragraph summary; return the exit code."""
    if any(a in ("-h", "--help", "help") for a in args):
        print("usage: smartpt prepare input=FILE_OR_GLOB output_prefix=PREFIX [key=value ...]\n")
        print(help_text())
        print("\nselection presets (selection=NAME): see conf/reasoning/*.yaml")
        return 0
    from nemo_smartpt.overrides import OverrideError
    from nemo_smartpt.reasoning.config import config_from_overrides
    from nemo_smartpt.reasoning.schemas import ReasoningDataError

    try:
        cfg = config_from_overrides(args)
    except (OverrideError, ReasoningDataError) as exc:
        print(f"smartpt prepare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from nemo_smartpt.reasoning.outputs import Interrupted, signals_as_interrupts
    from nemo_smartpt.reasoning.prepare import prepare

    try:
        with signals_as_interrupts():
            stats = prepare(cfg)
    except ReasoningDataError as exc:
        print(f"smartpt prepare: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        print(f"smartpt prepare: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else 2
        print(f"smartpt prepare: interrupted (signal {signum}); no output written", file=sys.stderr)
        return 128 + signum
    for warning in stats.get("warnings", []):
        print(f"smartpt prepare: warning: {warning}", file=sys.stderr)
    for path in stats.get("removed_partial_files", []):
        print(f"smartpt prepare: removed {path}, left by an interrupted earlier run", file=sys.stderr)
    print(
        f"prepare: {stats['documents']} documents, {stats['tokens']} tokens -> {_written(cfg, stats)}; "
        f"SFT {stats['sft']['examples']} examples; skipped {stats['skipped_total']} "
        f"({', '.join(f'{k}={v}' for k, v in stats['skipped'].items()) or 'none'}); "
        f"stats in {stats['outputs']['stats']}"
    )
    return 0


def _written(cfg, stats) -> str:
    if not stats.get("groups"):
        return f"{cfg.output_prefix}.bin/.idx"
    return ", ".join(f"{g['prefix']} ({g['documents']} docs)" for g in stats["groups"].values())
