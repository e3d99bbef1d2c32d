"""The data side of ``smartpt train``: which catalog and which sources (the plan itself: :mod:`nemo_smartpt.bridge.api`)."""

from __future__ import annotations

from pathlib import Path

import yaml


def resolve_catalog(cfg) -> Path:
    """The catalog file this run reads (``bundled`` builds the project's corpus once and reuses it)."""
    if cfg.data.catalog == "bundled":
        from nemo_smartpt.bundled.build import ensure_bundled_catalog

        return ensure_bundled_catalog(cfg.data.bundled_dir)
    path = Path(cfg.data.catalog)
    if not path.exists():
        from nemo_smartpt.overrides import OverrideError

        raise OverrideError(f"data.catalog: no such file {path}")
    return path


def catalog_text(cfg) -> str:
    """The run's catalog (written as ``out/catalog.yaml``): the chosen catalog with absolute prefixes, minus reasoning
    sources if asked, and the reasoning share and phases overridden if asked."""
    source = resolve_catalog(cfg)
    tree = yaml.safe_load(source.read_text()) or {}
    base = source.resolve().parent

    def absolute(prefix: str) -> str:
        return str(Path(prefix) if Path(prefix).is_absolute() else base / prefix)

    sources = []
    wanted = cfg.data.reasoning_sources
    for entry in tree.get("sources", []):
        if entry.get("category") == "reasoning" and (
            not cfg.data.reasoning or (wanted is not None and entry["name"] not in wanted)
        ):
            continue
        entry = dict(entry)
        if entry.get("category") == "reasoning":
            if cfg.data.reasoning_share is not None:
                entry["target_share"] = cfg.data.reasoning_share
            if cfg.data.reasoning_phases is not None:
                entry["phases"] = list(cfg.data.reasoning_phases)
        prefix = entry.get("prefix")
        entry["prefix"] = [absolute(p) for p in prefix] if isinstance(prefix, list) else absolute(prefix)
        sources.append(entry)
    if wanted is not None:
        missing = sorted(set(wanted) - {e["name"] for e in sources})
        if missing:
            from nemo_smartpt.overrides import OverrideError

            raise OverrideError(f"data.reasoning_sources: no reasoning source named {missing} in {source}")
    tree["sources"] = sources
    return f"# derived by smartpt train from {source}\n" + yaml.safe_dump(tree, sort_keys=False)
