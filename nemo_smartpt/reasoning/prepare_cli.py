"""``smartpt prepare key=value ...``: the command-line face of :func:`nemo_smartpt.reasoning.prepare.prepare`.

Example (OpenThoughts jsonl -> SHQ selection -> 80% pretraining indexed dataset + 20% SFT chat jsonl)::

    smartpt prepare input='data/ot/*.jsonl' output_prefix=out/shq format=openthoughts selection=shq \\
        select.max_tokens=1000000 split.sft_fraction=0.2 workers=2

Errors a user can fix (bad override, missing file, malformed record with ``on_error=fail``) print one line naming
the field, file and line, and return a non-zero code; no traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap

from nemo_smartpt.reasoning.config import PrepareConfig

EXIT_USAGE, EXIT_DATA = 2, 1


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right under each field) of a dataclass, read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def help_text(cls: type = PrepareConfig, prefix: str = "") -> str:
    """Every field of ``cls`` (nested dataclasses flattened with dots) with its default and docstring."""
    lines = []
    docs = _field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"\n  [{prefix}{f.name}] {docs.get(f.name, '')}")
            lines.append(help_text(type(value), f"{prefix}{f.name}."))
            continue
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        lines.append(f"  {prefix}{f.name}={shown}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


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
