"""``smartpt prepare key=value ...``: the command-line face of :func:`nemo_smartpt.reasoning.prepare.prepare`.

Example (OpenThoughts jsonl -> SHQ selection -> 80% pretraining indexed dataset + 20% SFT chat jsonl)::

    smartpt prepare input='data/ot/*.jsonl' output_prefix=out/shq format=openthoughts selection=shq \\
        select.max_tokens=1000000 split.sft_fraction=0.2 workers=2

Errors a user can fix (bad override, missing file, malformed record with ``on_error=fail``) print one line naming
the field, file and line, and return a non-zero code; no traceback.
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
    from nemo_smartpt.reasoning.prepare import prepare

    try:
        stats = prepare(cfg)
    except ReasoningDataError as exc:
        print(f"smartpt prepare: {exc}", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        print(f"smartpt prepare: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print("smartpt prepare: interrupted; no output written", file=sys.stderr)
        return 130
    print(
        f"prepare: {stats['documents']} documents, {stats['tokens']} tokens -> {cfg.output_prefix}.bin/.idx; "
        f"SFT {stats['sft']['examples']} examples; skipped {stats['skipped_total']} "
        f"({', '.join(f'{k}={v}' for k, v in stats['skipped'].items()) or 'none'}); "
        f"stats in {stats['outputs']['stats']}"
    )
    return 0
