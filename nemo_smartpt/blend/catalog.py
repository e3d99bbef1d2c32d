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

Token and document counts are never typed by hand: they are read from each prefix's ``.idx`` file (megatron-core's
``IndexedDataset``), so a catalog always describes the data on disk. Relative prefixes resolve against the directory
of the catalog file. Only :func:`load_catalog` touches Megatron (imported lazily), so the planner and the CLI's
``--help`` stay import-light.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIERS: dict[str, float] = {
    "high": 1.0,
    "medium_high": 0.7,
    "medium": 0.5,
    "medium_low": 0.3,
    "low": 0.15,
}
"""Nemotron-CC's five buckets with per-token weights. The paper publishes none; these step down ~1.4-2x per tier so
that a ``high`` crawl token is drawn ~6.7x as often as a ``low`` one, while phase 1 still reads every tier."""

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
    """Tokens in all prefixes together (from the ``.idx`` files)."""
    documents: int = 0
    """Documents in all prefixes together (from the ``.idx`` files)."""
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
            if src.target_share is not None and not 0.0 < src.target_share < 1.0:
                raise CatalogError(
                    f"source {src.name!r}{where}: target_share must be in (0, 1), got {src.target_share!r}"
                )
            if src.phases is not None and not src.phases:
                raise CatalogError(f"source {src.name!r}{where}: phases is empty (omit it to allow every phase)")


def _check_index_header(idx_path: str) -> tuple[int, int, int]:
    """Validate an ``.idx`` header and size before megatron-core maps it; return (sequences, documents, itemsize).

    megatron-core checks corrupt files with ``assert`` and leaves half-built objects whose ``__del__`` fails, so a
    garbage file is caught here first with a message that names it.
    """
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or head[:9] != _INDEX_MAGIC:
        raise IndexFileError(f"corrupt index {idx_path}: not a Megatron .idx file (bad header)")
    version, code, sequences, documents = struct.unpack("<QBQQ", head[9:])
    if version != 1 or code not in _ITEMSIZE_BY_CODE:
        raise IndexFileError(f"corrupt index {idx_path}: unsupported version {version} or dtype code {code}")
    # int32 length + int64 pointer per sequence, then the int64 document boundaries (the count includes a leading 0)
    expected = _HEADER_BYTES + 12 * sequences + 8 * documents
    if documents < 1 or size < expected:
        raise IndexFileError(f"corrupt index {idx_path}: {size} bytes, the header promises at least {expected}")
    return sequences, documents - 1, _ITEMSIZE_BY_CODE[code]


def read_index_counts(prefix: str) -> tuple[int, int]:
    """Return ``(tokens, documents)`` of one Megatron indexed dataset, read from its ``.idx`` file.

    Raises:
        IndexFileError: the ``.idx`` or ``.bin`` file is missing, or the ``.idx`` is not a valid index.
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise IndexFileError(f"missing {path} (prefix {prefix!r})")
    sequences, documents, itemsize = _check_index_header(idx_path)
    bin_size = os.path.getsize(bin_path)
    if sequences == 0 or bin_size == 0:
        return 0, documents  # nothing to map (numpy cannot mmap an empty file); validate() reports the empty source
    with warnings.catch_warnings():
        # Importing megatron-core warns about Transformer Engine/Apex, and its rank lookup warns outside
        # torch.distributed: neither matters for reading an index, and `smartpt plan` output should stay clean.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Could not determine rank")
            dataset = IndexedDataset(prefix, mmap=True)
        # The arrays are views into an mmap that is closed when the dataset is collected: copy to Python ints now.
        tokens = int(dataset.sequence_lengths.sum(dtype="int64"))
        documents = int(len(dataset.document_indices) - 1)
        del dataset
    except Exception as exc:  # what the header check cannot see: megatron's assert/numpy errors of many kinds
        raise IndexFileError(f"corrupt index {idx_path}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if bin_size != tokens * itemsize:
        raise IndexFileError(f"{bin_path} has {bin_size} bytes but {idx_path} describes {tokens * itemsize}")
    return tokens, documents


_INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER_BYTES = 34  # magic 9 + version 8 + dtype code 1 + sequence count 8 + document count 8
_ITEMSIZE_BY_CODE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron-core's DType codes


def _as_list(value: Any, what: str, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise CatalogError(f"source {name!r}: {what} must be a string or a non-empty list of strings, got {value!r}")


_SOURCE_KEYS = {"name", "prefix", "quality", "category", "max_epochs", "target_share", "phases"}


def catalog_from_dict(data: dict[str, Any], base_dir: str = ".", path: str | None = None, read_counts=None) -> Catalog:
    """Build and validate a :class:`Catalog` from parsed YAML.

    Args:
        data: the mapping with ``sources`` and optional ``tiers`` and ``emphasis_categories``.
        base_dir: where relative prefixes resolve.
        path: the file name, for messages.
        read_counts: ``prefix -> (tokens, documents)``; defaults to :func:`read_index_counts` (tests inject fakes).
    """
    read_counts = read_counts or read_index_counts
    where = path or "catalog"
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise CatalogError(f"{where}: expected a mapping with a 'sources:' list")
    unknown = set(data) - {"sources", "tiers", "emphasis_categories"}
    if unknown:
        raise CatalogError(f"{where}: unknown top-level keys {sorted(unknown)}")
    sources = []
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
    catalog = Catalog(sources=sources, path=path)
    if "tiers" in data:
        if not isinstance(data["tiers"], dict) or not data["tiers"]:
            raise CatalogError(f"{where}: 'tiers' must be a non-empty mapping of tier name -> weight")
        catalog.tiers = {str(k): v for k, v in data["tiers"].items()}
    if "emphasis_categories" in data:
        emphasis = data["emphasis_categories"] or []
        catalog.emphasis_categories = [] if emphasis == [] else _as_list(emphasis, "emphasis_categories", "catalog")
    catalog.validate()
    return catalog


def load_catalog(path: str) -> Catalog:
    """Read a catalog YAML file, resolve its prefixes and read their counts from the ``.idx`` files."""
    import yaml

    if not os.path.isfile(path):
        raise CatalogError(f"catalog file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path}: not valid YAML: {exc}".splitlines()[0]) from None
    return catalog_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), path=path)
