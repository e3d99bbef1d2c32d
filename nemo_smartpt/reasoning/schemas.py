"""Read reasoning records in the public schemas and normalise them to one shape.

Every input record becomes either a :class:`ReasoningExample` (question, thought, answer) or a :class:`TextDoc`
(already-rendered pretraining text). The layouts understood here:

- ``openthoughts``: ``{"system": ..., "conversations": [{"from": "user"|"human", "value": ...},
  {"from": "assistant"|"gpt", "value": ...}]}``. The assistant turn carries the reasoning either between
  ``<|begin_of_thought|>``/``<|end_of_thought|>`` (answer between ``<|begin_of_solution|>``/``<|end_of_solution|>``,
  OpenThoughts-114k) or inside ``<think>...</think>`` (OpenThoughts3). The metadata layout with ``problem``,
  ``deepseek_reasoning``, ``deepseek_solution`` and ``domain`` columns is read too.
- ``nemotron``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}], "category": ...,
  "reasoning": "on"|"off", ...}`` with the reasoning inside ``<think>`` in the assistant content.
- ``text``: ``{"text": ...}``, already pretraining text (Nemotron-Pretraining-SFT style).
- ``mapped``: any other layout, through a mapping from our field names (``question``, ``thought``, ``answer``,
  ``response``, ``system``, ``domain``, ``text``) to dotted paths in the record (``"output.0.content"``).
- ``auto``: picks one of the above per record from the keys present.

Input files are read lazily (jsonl line by line as bytes, parquet by row batches), so memory stays flat in file size.
A record that cannot be understood raises :class:`MalformedRecordError` with a short ``reason`` code; the caller
(``prepare``) decides whether that skips the record or stops the run, and names the file and line either way.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nemo_smartpt.reasoning.errors import MalformedRecordError, ReasoningDataError
from nemo_smartpt.reasoning.render import split_response

FORMATS = ("auto", "openthoughts", "nemotron", "text", "mapped")
"""Names accepted by ``format=``."""

MAPPED_KEYS = ("question", "thought", "answer", "response", "system", "domain", "text")
"""Our field names a ``mapped`` layout may point at (``response`` = one string holding thought and answer)."""

_USER_ROLES = frozenset({"user", "human"})
_ASSISTANT_ROLES = frozenset({"assistant", "gpt"})
# Scalar metadata copied into ``meta`` so selection can use difficulty / score / domain fields of any layout.
_SKIP_META = frozenset(
    {"system", "conversations", "messages", "problem", "deepseek_reasoning", "deepseek_solution", "text"}
)


@dataclass
class ReasoningExample:
    """One question / chain of thought / answer triple, markers already removed."""

    question: str
    thought: str
    answer: str
    domain: str | None = None
    """The record's own domain/category label, raw (``biology``, ``chat``, ...); selection maps it."""
    system: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    """Scalar fields of the record besides the conversation (difficulty, source, license, ...)."""


@dataclass
class TextDoc:
    """A record that is already pretraining text."""

    text: str
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


Record = ReasoningExample | TextDoc


# ---------------------------------------------------------------------------------------------------------------------
# Reading files


def expand_inputs(spec: str, setting: str = "input") -> list[str]:
    """Expand a comma-separated list of files or globs into a sorted, de-duplicated file list.

    Sorting makes the record order (and so the budget and split decisions that depend on it) independent of the
    file system's listing order.

    Args:
        spec: the comma-separated files or globs.
        setting: the setting they came from, named in the error (``input``, ``select.decontam_paths``).

    Raises:
        ReasoningDataError: when a pattern matches nothing.
    """
    files: list[str] = []
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise ReasoningDataError(f"{setting} {pattern!r} matches no file")
        files.extend(m for m in matches if m not in files)
    if not files:
        raise ReasoningDataError(f"{setting} is empty: give {setting}=FILE_OR_GLOB[,FILE_OR_GLOB...]")
    return files


def iter_raw(path: str, parquet_batch_rows: int = 256) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """Yield ``(line_or_row, payload)`` from one file, lazily.

    jsonl payloads are the raw line bytes (decoding and JSON parsing happen in the workers); parquet payloads are
    row dicts. Blank lines are skipped (they are not records).
    """
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise ReasoningDataError(f"{path}: cannot read parquet: {exc}") from None
        row = 0
        for batch in reader.iter_batches(batch_size=parquet_batch_rows):
            for item in batch.to_pylist():
                row += 1
                yield row, item
        return
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, line


def decode_payload(payload: bytes | dict[str, Any], encoding_errors: str) -> tuple[dict[str, Any], bool]:
    """Turn a raw payload into a JSON object.

    Args:
        payload: raw jsonl line or parquet row.
        encoding_errors: ``strict`` (bad UTF-8 is a malformed record) or ``replace`` (bad bytes become U+FFFD).

    Returns:
        The object and whether invalid UTF-8 was replaced (counted in the stats, so repairs are never silent).
    """
    if isinstance(payload, dict):
        return payload, False
    repaired = False
    payload = payload.rstrip(b"\r\n")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        if encoding_errors == "strict":
            raise MalformedRecordError("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
        text = payload.decode("utf-8", errors="replace")
        repaired = True
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedRecordError("invalid_json", f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise MalformedRecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj, repaired


# ---------------------------------------------------------------------------------------------------------------------
# Parsing records


def parse_record(obj: dict[str, Any], fmt: str, mapping: dict[str, str] | None = None) -> Record:
    """Normalise one JSON object in layout ``fmt`` (see the module docstring).

    Raises:
        MalformedRecordError: the object does not fit the layout.
    """
    if fmt == "auto":
        fmt = detect_format(obj)
    if fmt == "openthoughts":
        return _parse_openthoughts(obj)
    if fmt == "nemotron":
        return _parse_nemotron(obj)
    if fmt == "text":
        text = _require_str(obj, "text")
        return TextDoc(text=text, domain=_domain_of(obj), meta=_meta(obj))
    if fmt == "mapped":
        return _parse_mapped(obj, mapping or {})
    raise ReasoningDataError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def detect_format(obj: dict[str, Any]) -> str:
    """Guess the layout of one record from its keys."""
    if "conversations" in obj or "problem" in obj:
        return "openthoughts"
    if "messages" in obj:
        return "nemotron"
    if "text" in obj:
        return "text"
    keys = ", ".join(sorted(obj)[:8])
    raise MalformedRecordError(
        "unknown_layout", f"cannot tell the layout from keys [{keys}]; set format= (and mapping for format=mapped)"
    )


def _parse_openthoughts(obj: dict[str, Any]) -> ReasoningExample:
    if "conversations" not in obj:
        question = _require_str(obj, "problem")
        thought = _optional_str(obj, "deepseek_reasoning")
        answer = _optional_str(obj, "deepseek_solution")
        # The metadata columns sometimes keep the raw markers; strip them the same way as in conversations.
        if any(m in thought for m in ("<think>", "<|begin_of_thought|>")):
            thought, _ = split_response(thought)
        return ReasoningExample(question, thought.strip(), _strip_solution(answer), _domain_of(obj), "", _meta(obj))
    turns = obj["conversations"]
    if not isinstance(turns, list):
        raise MalformedRecordError("bad_type", "field 'conversations' must be a list")
    user, assistant = _pick_turns(turns, "from", "value", "conversations")
    thought, answer = split_response(assistant)
    system = obj.get("system") if isinstance(obj.get("system"), str) else ""
    return ReasoningExample(user, thought, answer, _domain_of(obj), system, _meta(obj))


def _parse_nemotron(obj: dict[str, Any]) -> ReasoningExample:
    turns = obj.get("messages")
    if not isinstance(turns, list):
        raise MalformedRecordError("missing_field", "field 'messages' missing or not a list")
    user, assistant = _pick_turns(turns, "role", "content", "messages")
    thought, answer = split_response(assistant)
    system = ""
    for turn in turns:
        if isinstance(turn, dict) and turn.get("role") == "system" and isinstance(turn.get("content"), str):
            system = turn["content"]
            break
    return ReasoningExample(user, thought, answer, _domain_of(obj), system, _meta(obj))


def _parse_mapped(obj: dict[str, Any], mapping: dict[str, str]) -> Record:
    unknown = sorted(set(mapping) - set(MAPPED_KEYS))
    if unknown:
        raise ReasoningDataError(f"mapping has unknown keys {unknown} (known: {', '.join(MAPPED_KEYS)})")
    values = {key: _lookup(obj, path) for key, path in mapping.items()}
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise MalformedRecordError("bad_type", f"mapped field {key!r} ({mapping[key]}) must be a string")
    domain = values.get("domain")
    if "text" in mapping:
        if values["text"] is None:
            raise MalformedRecordError("missing_field", f"mapped field 'text' ({mapping['text']}) is missing")
        return TextDoc(text=values["text"], domain=domain, meta=_meta(obj))
    if "question" not in mapping:
        raise ReasoningDataError("format=mapped needs mapping.question (or mapping.text for plain text)")
    if not values["question"]:
        raise MalformedRecordError("missing_field", f"mapped field 'question' ({mapping['question']}) is missing")
    if values.get("response") is not None:
        thought, answer = split_response(values["response"])
    else:
        thought = values.get("thought") or ""
        if any(marker in thought for marker in ("<think>", "</think>", "<|begin_of_thought|>")):
            thought = split_response(thought)[0]
        thought, answer = thought.strip(), _strip_solution(values.get("answer") or "")
    return ReasoningExample(values["question"], thought, answer, domain, values.get("system") or "", _meta(obj))


def _pick_turns(turns: list[Any], role_key: str, text_key: str, field_name: str) -> tuple[str, str]:
    """First user turn and the first assistant turn after it; a missing assistant turn means 'no answer'."""
    user: str | None = None
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise MalformedRecordError("bad_type", f"{field_name}[{index}] is not an object")
        role = str(turn.get(role_key, "")).lower()
        text = turn.get(text_key)
        if role in _USER_ROLES and user is None:
            if not isinstance(text, str):
                raise MalformedRecordError("bad_type", f"{field_name}[{index}].{text_key} must be a string")
            user = text
        elif role in _ASSISTANT_ROLES and user is not None:
            if not isinstance(text, str):
                raise MalformedRecordError("bad_type", f"{field_name}[{index}].{text_key} must be a string")
            return user, text
    if user is None:
        raise MalformedRecordError("missing_field", f"no user turn in {field_name!r}")
    return user, ""


def _strip_solution(text: str) -> str:
    return text.replace("<|begin_of_solution|>", "").replace("<|end_of_solution|>", "").strip()


def group_label(obj: dict[str, Any], path: str) -> str:
    """The ``group_by`` label of a record: the scalar at the dotted ``path``.

    Raises:
        MalformedRecordError: the field is missing or not a string/number/bool (reason ``missing_group``).
    """
    value = _lookup(obj, path)
    if value is None or isinstance(value, dict | list) or value == "":
        raise MalformedRecordError("missing_group", f"group_by field {path!r} is missing, empty or not a scalar")
    return str(value)


def _lookup(obj: Any, path: str) -> Any:
    node = obj
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def _require_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        raise MalformedRecordError("missing_field", f"field {key!r} is missing")
    if not isinstance(value, str):
        raise MalformedRecordError("bad_type", f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _optional_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedRecordError("bad_type", f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _domain_of(obj: dict[str, Any]) -> str | None:
    for key in ("domain", "category"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in _SKIP_META and isinstance(v, str | int | float | bool)}
