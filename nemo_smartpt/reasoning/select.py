"""Selection along the paper's three axes: quality, diversity, quantity (Akter et al., arXiv 2510.03264).

- Quality: per-example filters (a final answer exists, thought length within bounds, ``difficulty``/score fields of
  the record where present) and a score in [0, 1] that ``min_score`` thresholds (see :func:`quality_score`).
- Diversity: every example gets one of :data:`DOMAINS` from the record's own label (``domain`` in OpenThoughts,
  ``category`` in Nemotron, mapped through ``domain_aliases``) or, when it has none, from keyword rules on the
  question; ``domains`` keeps a subset.
- Quantity: ``max_tokens`` / ``max_examples`` cap what is taken (applied in input order by ``prepare``; with a
  pretraining/SFT split the cap is the whole reasoning budget, see :mod:`nemo_smartpt.reasoning.split`).

Plus exact de-duplication by normalised question (``dedup``) and decontamination: an example sharing any
``decontam_ngram``-word n-gram (13 by convention) with a user-supplied evaluation jsonl is dropped and counted.

The paper's ready-made selections (SHQ, LDQ, LMQ, and ``none``) are YAML files under ``conf/reasoning/`` that only set
fields of :class:`SelectConfig`; :func:`load_preset` reads them. Filters here are pure functions of one record, so
they run inside the tokenizing workers; de-duplication and budgets need the whole stream and run in the writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from nemo_smartpt.reasoning.schemas import ReasoningDataError, ReasoningExample, Record, TextDoc, expand_inputs

DOMAINS = ("math", "code", "science", "general")
"""The domain labels selection works with (the paper's math / code / science-and-general breakdown)."""


def _default_aliases() -> dict[str, str]:
    science = ("biology", "chemistry", "physics", "science", "stem", "medicine")
    general = ("chat", "general", "puzzle", "safety", "instruction", "instruction following", "multilingual")
    aliases = {"math": "math", "mathematics": "math", "code": "code", "coding": "code", "programming": "code"}
    aliases.update({name: "science" for name in science})
    aliases.update({name: "general" for name in general})
    return aliases


def _default_keywords() -> dict[str, list[str]]:
    return {
        "code": ["```", "def ", "function", "program", "python", "c++", "java", "algorithm", "array", "string s"],
        "math": ["\\frac", "$", "integer", "equation", "prove", "triangle", "probability", "sum of", "real number"],
        "science": ["molecule", "chemical", "reaction", "cell", "energy", "force", "velocity", "atom", "species"],
    }


@dataclass
class SelectConfig:
    """Which examples ``prepare`` keeps. The defaults keep everything (the ``none`` preset)."""

    require_answer: bool = False
    """Drop examples without a final answer (``no_answer``)."""
    min_thought_chars: int = 0
    """Drop examples whose thought is shorter (characters; ``thought_too_short``)."""
    max_thought_chars: int = 0
    """Drop examples whose thought is longer (characters; 0 = no bound; ``thought_too_long``)."""
    difficulty_field: str = "difficulty"
    """A numeric field of the record read as difficulty, where present."""
    min_difficulty: float | None = None
    """Drop examples whose difficulty field is below this (no effect on records without the field)."""
    max_difficulty: float | None = None
    """Drop examples whose difficulty field is above this."""
    score_field: str = ""
    """A numeric quality field of the record (e.g. a classifier score) that enters :func:`quality_score`."""
    score_field_max: float = 1.0
    """The largest value ``score_field`` takes (it is divided by this to land in [0, 1])."""
    target_thought_chars: int = 4000
    """Thought length that earns the full length component of the score (OpenThoughts thoughts are ~10k+)."""
    min_score: float = 0.0
    """Drop examples whose :func:`quality_score` is lower (``low_score``)."""
    domains: list[str] = field(default_factory=list)
    """Keep only these domains (empty = all of :data:`DOMAINS`)."""
    domain_aliases: dict[str, str] = field(default_factory=_default_aliases)
    """Record labels (lowercased) to domains; an unknown label falls back to the keyword rules."""
    domain_keywords: dict[str, list[str]] = field(default_factory=_default_keywords)
    """Domain -> case-insensitive substrings of the question; the domain with most hits wins, none -> general."""
    max_tokens: int = 0
    """Token budget of the selection (0 = no cap), EOD included; the total reasoning budget when splitting."""
    max_examples: int = 0
    """Example budget (0 = no cap)."""
    dedup: bool = False
    """Keep only the first example of each normalised question (the LMQ union needs it)."""
    decontam_paths: list[str] = field(default_factory=list)
    """Evaluation jsonl files or globs to decontaminate against."""
    decontam_ngram: int = 13
    """n of the word n-gram overlap rule."""
    decontam_fields: list[str] = field(default_factory=list)
    """Fields of the evaluation records to read (empty = every string value, nested ones included)."""


class SelectConfigError(ReasoningDataError):
    """A selection setting that cannot work."""


def check_select_config(cfg: SelectConfig) -> None:
    """Validate ``cfg`` at setup (no I/O)."""
    bad = sorted(set(cfg.domains) - set(DOMAINS))
    if bad:
        raise SelectConfigError(f"select.domains has unknown domains {bad} (known: {', '.join(DOMAINS)})")
    bad = sorted(set(cfg.domain_aliases.values()) - set(DOMAINS))
    if bad:
        raise SelectConfigError(f"select.domain_aliases maps to unknown domains {bad}")
    bad = sorted(set(cfg.domain_keywords) - set(DOMAINS))
    if bad:
        raise SelectConfigError(f"select.domain_keywords has unknown domains {bad}")
    for name in ("min_thought_chars", "max_thought_chars", "max_tokens", "max_examples", "target_thought_chars"):
        if getattr(cfg, name) < 0:
            raise SelectConfigError(f"select.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.decontam_ngram < 1:
        raise SelectConfigError(f"select.decontam_ngram must be >= 1, got {cfg.decontam_ngram}")
    if not 0.0 <= cfg.min_score <= 1.0:
        raise SelectConfigError(f"select.min_score must be in [0, 1], got {cfg.min_score}")


# ---------------------------------------------------------------------------------------------------------------------
# Keys, domains, quality

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise_question(text: str) -> str:
    """The form two questions must share to count as the same: NFKC, lowercased, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that is the same in every process and run (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64])
    return int.from_bytes(digest.digest(), "big")


def record_key_text(record: Record) -> str:
    """What de-duplication and the split hash: the normalised question (the text itself for a text doc)."""
    return normalise_question(record.question if isinstance(record, ReasoningExample) else record.text)


def label_domain(record: Record, cfg: SelectConfig) -> str:
    """One of :data:`DOMAINS` for ``record``: its own label when known, else the keyword rules."""
    if record.domain:
        mapped = cfg.domain_aliases.get(record.domain.strip().lower())
        if mapped:
            return mapped
    text = (record.question if isinstance(record, ReasoningExample) else record.text[:4000]).lower()
    best, best_hits = "general", 0
    for domain in DOMAINS:
        hits = sum(text.count(word.lower()) for word in cfg.domain_keywords.get(domain, ()))
        if hits > best_hits:
            best, best_hits = domain, hits
    return best


def _number(meta: dict[str, Any], name: str) -> float | None:
    value = meta.get(name) if name else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def quality_score(example: ReasoningExample, cfg: SelectConfig) -> float:
    """A score in [0, 1]: the mean of the components the record supports.

    Components: 1 if there is a final answer else 0; thought length / ``target_thought_chars`` (capped at 1);
    ``score_field`` / ``score_field_max`` (capped to [0, 1]) when the record has that field. Long reasoning and a final
    answer are the traits the paper's high-quality set (OpenThoughts3) has and the mixed set often lacks.
    """
    parts = [1.0 if example.answer.strip() else 0.0]
    target = cfg.target_thought_chars
    parts.append(min(1.0, len(example.thought) / target) if target else 1.0)
    field_score = _number(example.meta, cfg.score_field)
    if field_score is not None and cfg.score_field_max:
        parts.append(min(1.0, max(0.0, field_score / cfg.score_field_max)))
    return sum(parts) / len(parts)


def filter_reason(record: Record, domain: str, cfg: SelectConfig) -> str | None:
    """The reason code ``record`` is dropped for, or None to keep it. Text docs only see the domain filter."""
    if cfg.domains and domain not in cfg.domains:
        return "domain_not_selected"
    if isinstance(record, TextDoc):
        return None
    if cfg.require_answer and not record.answer.strip():
        return "no_answer"
    if len(record.thought) < cfg.min_thought_chars:
        return "thought_too_short"
    if cfg.max_thought_chars and len(record.thought) > cfg.max_thought_chars:
        return "thought_too_long"
    difficulty = _number(record.meta, cfg.difficulty_field)
    if difficulty is not None:
        if cfg.min_difficulty is not None and difficulty < cfg.min_difficulty:
            return "too_easy"
        if cfg.max_difficulty is not None and difficulty > cfg.max_difficulty:
            return "too_hard"
    if cfg.min_score > 0.0 and quality_score(record, cfg) < cfg.min_score:
        return "low_score"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Decontamination


class DecontamIndex:
    """The set of word n-grams of the evaluation sets; built once per worker process.

    n-grams are stored as Python ``hash`` values of word tuples: fast and compact, and consistent because the index
    is always built in the process that queries it. An evaluation text shorter than n words adds no n-gram (the
    usual 13-gram rule's known blind spot; lower ``decontam_ngram`` for short-answer sets).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.ngrams: set[int] = set()
        self.documents = 0

    @classmethod
    def from_config(cls, cfg: SelectConfig) -> DecontamIndex | None:
        """Read every ``decontam_paths`` file; None when there is nothing to decontaminate against."""
        if not cfg.decontam_paths:
            return None
        index = cls(cfg.decontam_ngram)
        for path in expand_inputs(",".join(cfg.decontam_paths), setting="select.decontam_paths"):
            with open(path, encoding="utf-8", errors="replace") as handle:
                for lineno, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ReasoningDataError(
                            f"{path}:{lineno}: evaluation record is not JSON: {exc.msg}"
                        ) from None
                    for text in _strings(obj, cfg.decontam_fields):
                        index.add(text)
                    index.documents += 1
        return index

    def _grams(self, text: str) -> list[int]:
        words = _WORD.findall(text.lower())
        n = self.n
        return [hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)]

    def add(self, text: str) -> None:
        """Add the n-grams of one evaluation text."""
        self.ngrams.update(self._grams(text))

    def contaminated(self, text: str) -> bool:
        """Whether ``text`` shares at least one n-gram with the evaluation sets."""
        ngrams = self.ngrams
        return any(g in ngrams for g in self._grams(text))


def _strings(obj: Any, fields: list[str]) -> list[str]:
    if fields:
        return [obj[f] for f in fields if isinstance(obj, dict) and isinstance(obj.get(f), str)]
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for value in obj.values() for s in _strings(value, [])]
    if isinstance(obj, list):
        return [s for value in obj for s in _strings(value, [])]
    return []


# ---------------------------------------------------------------------------------------------------------------------
# Presets


def presets_dir() -> str:
    """``conf/reasoning`` of the source tree (or of an installed copy next to the package)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(here, "..", "..", "conf", "reasoning"),
        os.path.join(here, "..", "conf", "reasoning"),
    ):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    raise SelectConfigError("cannot find conf/reasoning (the selection presets)")


def preset_names() -> list[str]:
    """The selection presets available (file names under ``conf/reasoning`` without ``.yaml``)."""
    return sorted(name[: -len(".yaml")] for name in os.listdir(presets_dir()) if name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The :class:`SelectConfig` fields a preset sets (``shq``, ``ldq``, ``lmq``, ``none``)."""
    from omegaconf import OmegaConf

    names = preset_names()
    if name.lower() not in names:
        raise SelectConfigError(f"unknown selection {name!r} (known: {', '.join(names)})")
    values = OmegaConf.to_container(OmegaConf.load(os.path.join(presets_dir(), f"{name.lower()}.yaml")))
    return values or {}
