"""``smartpt catalog``: quality-labelled Megatron datasets -> ``catalog.yaml`` for ``smartpt plan``.

The way in from a classifier. NeMo Curator's quality classifier labels documents ``High``/``Medium``/``Low``;
Nemotron-CC's ensemble puts them in 20 score buckets (0-19). ``smartpt prepare ... group_by=FIELD`` writes one dataset
per label value (``<output_prefix>_<label>``, listed in ``<output_prefix>.stats.json``); this command maps every
label to a quality tier and writes a catalog with one source per tier (all prefixes of the tier's labels)::

    smartpt prepare input=curated.jsonl format=text group_by=quality_pred output_prefix=data/cc
    smartpt catalog prepared=[data/cc] out=data/catalog.yaml
    smartpt plan catalog=data/catalog.yaml budget_tokens=1e9

Labels are matched case-insensitively against ``tiers`` (label -> tier). The defaults cover Curator's three labels and
the 20 Nemotron-CC buckets; a label without a tier is an error naming ``tiers.<label>``. Every ``.idx`` is validated
and its token and document counts are written beside its prefix (as comments: ``smartpt plan`` reads the files
again, so the catalog never goes stale). An existing ``out`` is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from nemo_smartpt.blend.catalog import DEFAULT_TIERS, CatalogError
from nemo_smartpt.blend.index_check import IndexValidationError, validate_index
from nemo_smartpt.overrides import OverrideError, build_config, describe


def curator_tiers() -> dict[str, str]:
    """NeMo Curator's quality classifier labels -> tiers."""
    return {"high": "high", "medium": "medium", "low": "low"}


def nemotron_cc_tiers() -> dict[str, str]:
    """Nemotron-CC's 20 score buckets (0-19) -> five tiers, four buckets each (equal-width: the bucket edges of the
    paper's grouping are not reproduced here; override ``tiers.<bucket>`` to use other edges)."""
    names = ["low", "medium_low", "medium", "medium_high", "high"]
    return {str(bucket): names[bucket // 4] for bucket in range(20)}


def default_tiers() -> dict[str, str]:
    return {**curator_tiers(), **nemotron_cc_tiers()}


def default_max_epochs() -> dict[str, float]:
    """Epoch caps per tier: repeat the best data, read the worst once (Nemotron-CC's long-horizon recipe repeats
    high-quality crawl several times and lower tiers about once; the exact counts are the user's call)."""
    return {"high": 4.0, "medium_high": 2.0, "medium": 2.0, "medium_low": 1.0, "low": 1.0}


@dataclass
class CatalogConfig:
    """Settings of ``smartpt catalog``."""

    prepared: list[str] = field(default_factory=list)
    """``output_prefix`` of ``smartpt prepare ... group_by=FIELD`` runs: their ``.stats.json`` lists label -> prefix."""
    prefixes: list[str] = field(default_factory=list)
    """Further dataset prefixes; the label is the text after the last ``_`` of the name (``cc_High`` -> ``High``)."""
    tiers: dict[str, str] = field(default_factory=default_tiers)
    """Label -> quality tier (case-insensitive). Defaults: Curator's High/Medium/Low and Nemotron-CC buckets 0-19."""
    max_epochs: dict[str, float] = field(default_factory=default_max_epochs)
    """Tier -> epoch cap of its source."""
    category: str = "crawl"
    """Category of every source (``crawl``: phase 2's tier filter applies to it)."""
    name: str = ""
    """Source names are ``<name>_<tier>``; empty: the base name of the first prepared prefix (or ``crawl``)."""
    out: str = "catalog.yaml"
    """The catalog file to write; relative prefixes in it resolve against its directory."""
    overwrite: bool = False
    """Replace an existing ``out``."""


def help_text() -> str:
    return "usage: smartpt catalog prepared=[PREFIX,...] [prefixes=[...]] out=catalog.yaml [key=value ...]\n\n" + (
        describe(CatalogConfig)
    )


def labelled_prefixes(cfg: CatalogConfig) -> list[tuple[str, str]]:
    """``(label, prefix)`` of every dataset named by ``prepared`` and ``prefixes``."""
    found: list[tuple[str, str]] = []
    for prepared in cfg.prepared:
        stats_path = prepared + ".stats.json"
        try:
            with open(stats_path, encoding="utf-8") as f:
                groups = json.load(f).get("groups") or {}
        except (OSError, ValueError) as exc:
            raise CatalogError(f"prepared={prepared}: cannot read {stats_path} ({exc})") from None
        if not groups:
            raise CatalogError(
                f"prepared={prepared}: {stats_path} lists no groups; it was not written by `smartpt prepare "
                f"group_by=FIELD` (give its prefix in prefixes=[...] instead)"
            )
        found += [(str(label), str(entry["prefix"])) for label, entry in groups.items()]
    for prefix in cfg.prefixes:
        base = os.path.basename(prefix)
        if "_" not in base:
            raise CatalogError(f"prefixes: cannot read a label from {prefix!r} (expected NAME_LABEL)")
        found.append((base.rsplit("_", 1)[1], prefix))
    if not found:
        raise OverrideError("give prepared=[PREFIX,...] (group_by runs of smartpt prepare) or prefixes=[...]")
    return found


def build_catalog(cfg: CatalogConfig) -> tuple[dict, list[str]]:
    """The catalog mapping and one comment line per prefix (its token and document counts)."""
    tiers = {str(k).lower(): v for k, v in cfg.tiers.items()}
    unknown_tiers = sorted({t for t in tiers.values() if t not in DEFAULT_TIERS})
    if unknown_tiers:
        raise OverrideError(f"tiers: unknown tier(s) {unknown_tiers} (known: {', '.join(DEFAULT_TIERS)})")
    name = cfg.name or (os.path.basename(cfg.prepared[0]) if cfg.prepared else "crawl")
    out_dir = os.path.dirname(os.path.abspath(cfg.out))
    by_tier: dict[str, list[str]] = {}
    notes = []
    for label, prefix in labelled_prefixes(cfg):
        tier = tiers.get(label.lower())
        if tier is None:
            raise OverrideError(
                f"label {label!r} ({prefix}) has no tier: add tiers.{label}=TIER (one of {', '.join(DEFAULT_TIERS)})"
            )
        try:
            summary = validate_index(prefix)
        except IndexValidationError as exc:
            raise CatalogError(str(exc)) from None
        by_tier.setdefault(tier, []).append(os.path.relpath(os.path.abspath(prefix), out_dir))
        notes.append(f"#   {label} -> {tier}: {prefix} ({summary.tokens} tokens, {summary.documents} documents)")
    sources = []
    for tier in DEFAULT_TIERS:  # best tier first
        if tier not in by_tier:
            continue
        if tier not in cfg.max_epochs:
            raise OverrideError(f"max_epochs has no entry for tier {tier!r}: add max_epochs.{tier}=N")
        prefixes = by_tier[tier]
        sources.append(
            {
                "name": f"{name}_{tier}",
                "prefix": prefixes[0] if len(prefixes) == 1 else prefixes,
                "quality": tier,
                "category": cfg.category,
                "max_epochs": cfg.max_epochs[tier],
            }
        )
    return {"sources": sources}, notes


def run(cfg: CatalogConfig) -> str:
    """Write the catalog; return its path."""
    import yaml

    if os.path.isdir(cfg.out):
        raise OverrideError(f"out={cfg.out} is a directory; give the catalog file, e.g. out={cfg.out}/catalog.yaml")
    if os.path.exists(cfg.out) and not cfg.overwrite:
        raise OverrideError(f"out={cfg.out} exists; pass overwrite=true to replace it")
    catalog, notes = build_catalog(cfg)
    header = ["# Written by `smartpt catalog`; labels, tiers and counts (train + held-out) at writing time:", *notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(catalog, sort_keys=False)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    partial = f"{cfg.out}.partial-{os.getpid()}"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(partial, cfg.out)
    except OSError as exc:
        if os.path.exists(partial):
            os.remove(partial)
        raise OverrideError(f"out={cfg.out}: cannot write: {exc.strerror or exc}") from None
    print(text, end="")
    print(f"wrote {cfg.out} ({len(catalog['sources'])} sources)")
    return cfg.out


def main(args: list[str]) -> int:
    """Entry point of ``smartpt catalog``; 2 on bad input, with a one-line message."""
    if any(a in ("-h", "--help", "help") for a in args):
        print(help_text())
        return 0
    try:
        run(build_config(CatalogConfig, list(args)))
    except (OverrideError, CatalogError) as exc:
        print(f"smartpt catalog: error: {exc}", file=sys.stderr)
        return 2
    return 0
