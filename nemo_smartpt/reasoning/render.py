"""Turn a normalised example into pretraining text (and into SFT chat messages).

The datasets mark reasoning differently: OpenThoughts-114k wraps it in ``<|begin_of_thought|>...<|end_of_thought|>``
and the answer in ``<|begin_of_solution|>...<|end_of_solution|>``; OpenThoughts3 and Nemotron use
``<think>...</think>``; some generations drop the opening ``<think>`` and only close it. :func:`split_response` reads
all of these into ``(thought, answer)``; rendering then writes one convention, ``<think>...</think>``, through a
template, so a model pretrained on a mix of sources sees a single marker.

Nested markers (a ``<think>`` inside the thought, e.g. a model quoting the format) are matched by depth, so the
outermost block is the thought and the inner tags stay as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemo_smartpt.reasoning.errors import ReasoningDataError

if TYPE_CHECKING:
    from nemo_smartpt.reasoning.schemas import ReasoningExample

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_OT_THOUGHT = ("<|begin_of_thought|>", "<|end_of_thought|>")
_OT_SOLUTION = ("<|begin_of_solution|>", "<|end_of_solution|>")
_THINK_TAG = re.compile(r"<think>|</think>")
_PLACEHOLDER = re.compile(r"\{(system|question|thought|answer)\}")


@dataclass
class RenderConfig:
    """How an example becomes one pretraining document and one SFT conversation."""

    template: str = "{question}\n\n<think>\n{thought}\n</think>\n\n{answer}"
    """Pretraining text. Placeholders: ``{system}``, ``{question}``, ``{thought}``, ``{answer}``; other braces are
    literal. Substitution is one pass, so a ``{answer}`` inside the data is never expanded."""
    template_no_thought: str = "{question}\n\n{answer}"
    """Used instead of ``template`` when the thought is empty and ``empty_thought=omit``."""
    empty_thought: str = "keep"
    """``keep``: render an empty ``<think></think>`` block (the model still learns the format); ``omit``: use
    ``template_no_thought``."""
    assistant_template: str = "<think>\n{thought}\n</think>\n\n{answer}"
    """The assistant message of the SFT conversation (same placeholders)."""
    include_system: bool = False
    """Put the record's system prompt as a ``system`` message in the SFT conversation."""
    normalise_text_docs: bool = False
    """Rewrite OpenThoughts thought markers as ``<think>`` tags (and drop solution markers) in plain-``text`` records
    too. Off by default: a ``text`` document is tokenized exactly as written, as Megatron-LM's
    ``tools/preprocess_data.py`` does."""


class RenderError(ReasoningDataError):
    """A render setting that cannot work (named in the message)."""


def check_render_config(cfg: RenderConfig) -> None:
    """Validate ``cfg`` at setup (no I/O), so a typo fails before any record is read."""
    if cfg.empty_thought not in ("keep", "omit"):
        raise RenderError(f"render.empty_thought must be keep or omit, got {cfg.empty_thought!r}")
    if "{question}" not in cfg.template:
        raise RenderError("render.template must contain {question}")


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute the placeholders of ``template`` in one pass and strip outer whitespace."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template).strip()


def render_text(example: ReasoningExample, cfg: RenderConfig) -> str:
    """The pretraining document for ``example`` (EOD is appended by the tokenizing step, not here)."""
    values = _values(example)
    template = cfg.template
    if not values["thought"] and cfg.empty_thought == "omit":
        template = cfg.template_no_thought
    return fill(template, values)


def render_messages(example: ReasoningExample, cfg: RenderConfig) -> list[dict[str, str]]:
    """The SFT conversation in the ``messages`` layout Megatron-Bridge's chat SFT dataset reads."""
    messages = []
    if cfg.include_system and example.system:
        messages.append({"role": "system", "content": example.system})
    messages.append({"role": "user", "content": example.question.strip()})
    messages.append({"role": "assistant", "content": fill(cfg.assistant_template, _values(example))})
    return messages


def _values(example: ReasoningExample) -> dict[str, str]:
    return {
        "system": example.system.strip(),
        "question": example.question.strip(),
        "thought": example.thought.strip(),
        "answer": example.answer.strip(),
    }


def normalise_markers(text: str) -> str:
    """Rewrite OpenThoughts' thought markers as ``<think>`` tags and drop the solution markers."""
    text = text.replace(_OT_THOUGHT[0], THINK_OPEN).replace(_OT_THOUGHT[1], THINK_CLOSE)
    return text.replace(_OT_SOLUTION[0], "").replace(_OT_SOLUTION[1], "")


def split_response(text: str) -> tuple[str, str]:
    """Split an assistant response into ``(thought, answer)``, whatever markers it uses.

    Rules, in order: OpenThoughts markers become ``<think>`` tags; the first ``<think>`` opens the thought and the
    ``</think>`` at the same depth closes it; a ``</think>`` with no opening tag closes a thought that started at the
    beginning; an unclosed ``<think>`` (a truncated generation) makes the rest the thought and the answer empty; no
    markers at all make everything the answer.
    """
    text = normalise_markers(text)
    first_open = text.find(THINK_OPEN)
    first_close = text.find(THINK_CLOSE)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        return text[:first_close].strip(), text[first_close + len(THINK_CLOSE) :].strip()
    if first_open == -1:
        return "", text.strip()
    depth = 0
    for match in _THINK_TAG.finditer(text, first_open):
        depth += 1 if match.group() == THINK_OPEN else -1
        if depth == 0:
            thought = text[first_open + len(THINK_OPEN) : match.start()]
            return thought.strip(), text[match.end() :].strip()
    return text[first_open + len(THINK_OPEN) :].strip(), ""
