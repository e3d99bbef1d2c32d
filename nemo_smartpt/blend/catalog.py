"""The source catalog: what data exists, how good it is, and how often it may be repeated.

A catalog is a YAML file with a ``sources:`` list and two optional tables::

    tiers:                      # per-token weight of each quality tier (higher weighs more)
      high: 1.0
      medium_high: 0.7
    emphasis_categories: [math, code, wiki, reasoning]   # up-weighted by a phase policy (phase 2 by default)
    sources:
      - name: crawl_high
        prefix: data/crawl_high_text_document          # or a list of prefixes, one Megatron dataset each
        quality: high
        category: crawl
        max_epochs: 4
      - name: reasoning_shq
        prefix: [data/ot3_math_text_document, data/ot3_code_text_document]
        quality: high
        category: reasoning
        max_epochs: 16
        target_share: 0.2                                 # pinned: exactly 20% of every phase it is in
        phases: [phase2]                                  # default: every phase

Token and document counts are never typed by hand: they are read from each prefix's ``.idx`` file, which is validated
in full first (:mod:`nemo_smartpt.blend.index_check`), so a catalog always describes the data on disk and a corrupt
index fails at plan time, naming the file. The counts are those of the *train split* the dataset reads (megatron-core's
split string, ``98,1,1`` by default): an epoch cap then holds on what training really reads. Relative prefixes resolve
against the directory of the catalog file. Two sources may not share a prefix (each would be capped alone while both
read the same documents).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from nemo_smartpt.blend.index_check import IndexValidationError, validate_index

DEFAULT_TIERS: dict[str, float] = {
    "high": 1.0,
    "medium_high": 0.7,
    "medium": 0.5,
    "medium_low": 0.3,
    "low": 0.15,
}
"""Nemotron-CC's five buckets with per-token weights. The paper publishes none; these step down ~1.4-2x per tier so
that a ``high`` crawl token is drawn ~6.7x as often as a ``low`` one, while phase 1 still reads every tier."""

DEFAULT_SPLIT = "98,1,1"
"""megatron-core split string the catalog counts the train part of (``smartpt train``'s ``data.split`` default)."""

DEFAULT_EMPHASIS_CATEGORIES: tuple[str, ...] = ("math", "code", "wiki", "reasoning")
"""Categories the paper's phase 2 gives more epochs (math, code, Wikipedia and the like)."""


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the source or file at fault."""


class IndexFileError(CatalogError):
    """A prefix whose ``.idx``/``.bin`` file is missing or unreadable."""


class UnknownTierError(CatalogError):
    """A source whose ``quality`` is not one of the catalog's tiers."""


class InvalidCapError(CatalogError):
    """A source whose ``max_epochs`` is zero, negative or not a finite number."""


class EmptySourceError(CatalogError):
    """A source with no tokens: nothing could ever be drawn from it."""


@dataclass
class Source:
    """One logical data source (a category at one quality tier), possibly split over several Megatron prefixes."""

    name: str
    """Unique name; the key of the plan's weight tables."""
    prefixes: list[str]
    """Megatron indexed-dataset prefixes (``<prefix>.bin`` + ``<prefix>.idx``), absolute after loading."""
    quality: str
    """Quality tier, one of the catalog's ``tiers``."""
    category: str
    """Domain category: crawl, math, code, wiki, books, papers, reasoning, ..."""
    max_epochs: float
    """Most passes over the source in the whole run; the planner never draws more than ``max_epochs * tokens``."""
    tokens: int = 0
    """Train-split tokens in all prefixes together (from the ``.idx`` files): what the dataset reads."""
    documents: int = 0
    """Train-split documents in all prefixes together (from the ``.idx`` files)."""
    prefix_tokens: list[int] = field(default_factory=list)
    """Tokens per prefix, same order as ``prefixes``; the source's weight is split across prefixes in proportion."""
    target_share: float | None = None
    """If set, the source is pinned to exactly this share of the tokens of every phase it is in."""
    phases: list[str] | None = None
    """Phase names the source may appear in; ``None`` means all phases."""

    @property
    def cap_tokens(self) -> float:
        """The most tokens the run may draw from this source."""
        return self.max_epochs * self.tokens


@dataclass
class Catalog:
    """Sources plus the tier weights and emphasis categories that the planner's rules use."""

    sources: list[Source]
    tiers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    """Tier name -> per-token weight; a higher weight is a higher tier."""
    emphasis_categories: list[str] = field(default_factory=lambda: list(DEFAULT_EMPHASIS_CATEGORIES))
    """Categories that phase policies with ``emphasis_multiplier > 1`` up-weight."""
    path: str | None = None
    """The YAML file the catalog came from (for messages), if any."""
    split: str | None = None
    """megatron-core split string whose train range the token counts cover (recorded in the plan); ``None`` when
    the counts were given directly."""

    def source(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(f"no source named {name!r} (known: {', '.join(s.name for s in self.sources)})")

    def validate(self) -> None:
        """Check every rule that does not need the files; raise a specific :class:`CatalogError` subclass."""
        where = f" in {self.path}" if self.path else ""
        if not self.sources:
            raise CatalogError(f"catalog{where} has no sources")
        for tier, weight in self.tiers.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise CatalogError(f"tier {tier!r}{where} has weight {weight!r}; tier weights must be > 0")
        seen: set[str] = set()
        for src in self.sources:
            if src.name in seen:
                raise CatalogError(f"source name {src.name!r} appears twice{where}")
            seen.add(src.name)
            if src.quality not in self.tiers:
                raise UnknownTierError(
                    f"source {src.name!r}{where}: unknown quality tier {src.quality!r} "
                    f"(known tiers: {', '.join(self.tiers)})"
                )
            cap = src.max_epochs
            if isinstance(cap, bool) or not isinstance(cap, int | float) or not math.isfinite(cap) or cap <= 0:
                raise InvalidCapError(f"source {src.name!r}{where}: max_epochs must be a number > 0, got {cap!r}")
            if src.tokens <= 0:
                raise EmptySourceError(
                    f"source {src.name!r}{where} has no tokens (prefixes: {', '.join(src.prefixes) or 'none'})"
                )
            share = src.target_share
            if share is not None and (
                isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < share < 1.0
            ):
                raise CatalogError(
                    f"source {src.name!r}{where}: target_share must be in (0, 1), got {src.target_share!r}"
                )
            if src.phases is not None and not src.phases:
                raise CatalogError(f"source {src.name!r}{where}: phases is empty (omit it to allow every phase)")


def train_range(split: str, sequences: int) -> tuple[int, int]:
    """The ``[begin, end)`` sequences megatron-core's builder gives the train split of a prefix."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    parts = [p.strip() for p in re.split(r"[,/]", str(split))]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    # megatron-core reads any digits it finds (``abc`` becomes 0,0,0 and then NaN): check the string first
    if not 1 <= len(numbers) <= 3 or min(numbers) < 0 or sum(numbers) <= 0 or numbers[0] <= 0:
        raise CatalogError(f"split={split!r} is not a megatron-core split string like 98,1,1 (train part > 0)")
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(str(split)))
    bookends = matrix[0]
    if bookends is None:
        return 0, 0
    return round(bookends[0] * sequences), round(bookends[1] * sequences)


def read_index_counts(prefix: str, split: str | None = None) -> tuple[int, int]:
    """Return ``(tokens, documents)`` of one Megatron indexed dataset, read from its validated ``.idx`` file.

    With ``split`` (a megatron-core split string), only the train range is counted: the documents the phased dataset
    really reads, so epoch caps hold on what is read.

    Raises:
        IndexFileError: the ``.idx`` or ``.bin`` file is missing, or the pair fails :func:`validate_index`.
    """
    try:
        summary = validate_index(prefix)
    except IndexValidationError as exc:
        raise IndexFileError(str(exc)) from None
    if split is None:
        return summary.tokens, summary.documents
    begin, end = train_range(split, len(summary.sequence_lengths))
    return int(summary.sequence_lengths[begin:end].sum(dtype="int64")), end - begin


def _as_list(value: Any, what: str, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise CatalogError(f"source {name!r}: {what} must be a string or a non-empty list of strings, got {value!r}")


_SOURCE_KEYS = {"name", "prefix", "quality", "category", "max_epochs", "target_share", "phases"}


def catalog_from_dict(
    data: dict[str, Any],
    base_dir: str = ".",
    path: str | None = None,
    read_counts=None,
    split: str = DEFAULT_SPLIT,
) -> Catalog:
    """Build and validate a :class:`Catalog` from parsed YAML.

    Args:
        data: the mapping with ``sources`` and optional ``tiers`` and ``emphasis_categories``.
        base_dir: where relative prefixes resolve.
        path: the file name, for messages.
        read_counts: ``prefix -> (tokens, documents)``; defaults to :func:`read_index_counts` of the ``split``'s train
            range (tests inject fakes).
        split: megatron-core split string whose train range is counted.
    """
    read_counts = read_counts or (lambda prefix: read_index_counts(prefix, split))
    where = path or "catalog"
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise CatalogError(f"{where}: expected a mapping with a 'sources:' list")
    unknown = set(data) - {"sources", "tiers", "emphasis_categories"}
    if unknown:
        raise CatalogError(f"{where}: unknown top-level keys {sorted(unknown)}")
    sources = []
    owner: dict[str, str] = {}
    for i, entry in enumerate(data["sources"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise CatalogError(f"{where}: sources[{i}] must be a mapping with a 'name'")
        name = str(entry["name"])
        missing = {"prefix", "quality", "category", "max_epochs"} - set(entry)
        if missing:
            raise CatalogError(f"{where}: source {name!r} lacks {sorted(missing)}")
        extra = set(entry) - _SOURCE_KEYS
        if extra:
            raise CatalogError(f"{where}: source {name!r} has unknown keys {sorted(extra)}")
        prefixes = [os.path.normpath(os.path.join(base_dir, p)) for p in _as_list(entry["prefix"], "prefix", name)]
        for prefix in prefixes:
            real = os.path.realpath(prefix)
            if real in owner and owner[real] != name:  # a repeated name is reported as such by validate()
                raise CatalogError(
                    f"{where}: sources {owner[real]!r} and {name!r} both read prefix {prefix}; each would be capped "
                    f"alone while both draw the same documents - give each prefix to one source"
                )
            owner[real] = name
        counts = [read_counts(p) for p in prefixes]
        phases = entry.get("phases")
        sources.append(
            Source(
                name=name,
                prefixes=prefixes,
                quality=str(entry["quality"]),
                category=str(entry["category"]),
                max_epochs=entry["max_epochs"],
                tokens=sum(c[0] for c in counts),
                documents=sum(c[1] for c in counts),
                prefix_tokens=[c[0] for c in counts],
                target_share=entry.get("target_share"),
                phases=None if phases is None else _as_list(phases, "phases", name),
            )
        )
    catalog = Catalog(sources=sources, path=path, split=split)
    if "tiers" in data:
        if not isinstance(data["tiers"], dict) or not data["tiers"]:
            raise CatalogError(f"{where}: 'tiers' must be a non-empty mapping of tier name -> weight")
        catalog.tiers = {str(k): v for k, v in data["tiers"].items()}
    if "emphasis_categories" in data:
        emphasis = data["emphasis_categories"] or []
        catalog.emphasis_categories = [] if emphasis == [] else _as_list(emphasis, "emphasis_categories", "catalog")
    catalog.validate()
    return catalog


def load_catalog(path: str, split: str = DEFAULT_SPLIT) -> Catalog:
    """Read a catalog YAML file, resolve its prefixes, validate their ``.idx`` files and count their ``split``'s
    train range."""
    import yaml

    if not os.path.isfile(path):
        raise CatalogError(f"catalog file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from None
    return catalog_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), path=path, split=split)
