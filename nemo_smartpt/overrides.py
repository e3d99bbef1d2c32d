"""Hydra override grammar for every ``smartpt`` subcommand.

Each subcommand's settings live in one dataclass (the only home of their defaults). The command line is a list of
Hydra overrides, parsed by Hydra's own ``OverridesParser`` (the grammar Megatron-Bridge uses for its
``ConfigContainer``), and applied to an OmegaConf structured config built from the dataclass:

- ``key=value`` sets an existing field (type-checked by OmegaConf: ``steps=abc`` on an int field fails);
- ``+key=value`` adds a key that is not in the schema; only allowed inside free-form ``dict`` fields;
- ``++key=value`` sets the key whether or not it exists;
- ``~key`` removes an override: the field falls back to its dataclass default (a structured config cannot lose a
  field, so "delete" means "back to default").

Unknown keys fail with the parser's message, naming the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class OverrideError(ValueError):
    """A command-line override that does not parse or does not fit the schema."""


def hydra_quote(text: str) -> str:
    """``text`` as a quoted Hydra string, so ``/ = , :``, brackets and spaces stay literal.

    Inside Hydra's quoted strings a backslash is literal except in a run that precedes a quote (or the closing
    quote): such runs are doubled and the quote itself escaped.
    """
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped + "'"


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Parse ``key=value`` strings with Hydra's grammar; raise :class:`OverrideError` naming the bad one."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as exc:
            raise OverrideError(f"cannot parse override {text!r}: {exc}") from None
    return parsed


def apply_overrides(cfg: DictConfig, overrides: list[str], defaults: DictConfig | None = None) -> DictConfig:
    """Apply Hydra-grammar overrides to an OmegaConf config in place and return it.

    Args:
        cfg: the config to change (structured or plain).
        overrides: command-line strings such as ``a.b=1``, ``+extra.key=x``, ``~a.b``.
        defaults: where ``~key`` takes the restored value from; without it ``~key`` deletes the key.
    """
    for ov in parse_overrides(overrides):
        key = ov.key_or_group
        try:
            if ov.is_delete():
                if defaults is not None:
                    OmegaConf.update(cfg, key, OmegaConf.select(defaults, key), merge=False)
                else:
                    parent, _, leaf = key.rpartition(".")
                    node = OmegaConf.select(cfg, parent) if parent else cfg
                    if node is None or leaf not in node:
                        raise OverrideError(f"cannot delete {key!r}: no such key")
                    with_flag = OmegaConf.is_struct(node)
                    OmegaConf.set_struct(node, False)
                    node.pop(leaf)
                    OmegaConf.set_struct(node, with_flag)
                continue
            value = ov.value()
            if ov.is_add():
                if _has_key(cfg, key):
                    raise OverrideError(f"cannot add {key!r}: it already exists (use {key}=... to set it)")
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
            elif ov.is_force_add():
                OmegaConf.update(cfg, key, value, merge=True, force_add=True)
            else:
                if not _has_key(cfg, key):
                    raise OverrideError(
                        f"unknown key {key!r} in override {ov.input_line!r} "
                        f"(known at that level: {', '.join(_siblings(cfg, key)) or 'none'}; use +{key}=... to add)"
                    )
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as exc:
            raise OverrideError(f"override {ov.input_line!r}: {exc}".splitlines()[0]) from None
    return cfg


def build_config[T](schema: type[T], overrides: list[str], base: dict[str, Any] | None = None) -> T:
    """Instantiate ``schema`` (a dataclass) from optional ``base`` values and command-line overrides.

    The result is a real dataclass instance (``OmegaConf.to_object``), so the code behind a command never sees
    OmegaConf types.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    defaults = OmegaConf.structured(schema)
    cfg = OmegaConf.structured(schema)
    if base:
        try:
            cfg = OmegaConf.merge(cfg, base)
        except OmegaConfBaseException as exc:
            raise OverrideError(f"config does not fit {schema.__name__}: {exc}".splitlines()[0]) from None
    apply_overrides(cfg, overrides, defaults=defaults)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise OverrideError(f"incomplete config for {schema.__name__}: {exc}".splitlines()[0]) from None


def _siblings(cfg: DictConfig, key: str) -> list[str]:
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, ListConfig):
        return [f"{i} (of {len(node)} entries)" for i in range(len(node))]
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` (dotted) exists, also when its value is MISSING (``???``), which ``select`` hides."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))  # list entries: phases.1.crawl_tiers
            continue
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def field_docs(schema: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (Python keeps none at runtime, so read them from the source)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(schema))).body[0].body
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return docs
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe(schema: type, prefix: str = "") -> str:
    """A ``--help`` listing of a settings dataclass: each field with its type, default and docstring; nested
    settings dataclasses are listed under their dotted prefix (``rlp.num_rollouts``)."""
    docs = field_docs(schema)
    lines = [] if prefix else [f"settings ({schema.__name__}):"]
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        if dataclasses.is_dataclass(value):
            lines.append(f"  [{prefix}{f.name}] {docs.get(f.name, '')}".rstrip())
            lines.append(describe(type(value), f"{prefix}{f.name}."))
            continue
        shown = (
            "(required)"
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else repr(value)
        )
        if len(shown) > 80:
            shown = shown[:77] + "..."
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {prefix}{f.name}: {type_name} = {shown}")
        if f.name in docs:
            lines.append(f"      {docs[f.name]}")
    return "\n".join(lines)
