"""The data side of ``smartpt train``: which catalog, which sources, and the plan for exactly this run's tokens."""

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


def run_catalog(cfg, out: Path) -> Path:
    """Write ``out/catalog.yaml``: the chosen catalog with absolute prefixes, minus reasoning sources if asked, and
    the reasoning share and phases overridden if asked."""
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
    out.mkdir(parents=True, exist_ok=True)
    target = out / "catalog.yaml"
    target.write_text(f"# derived by smartpt train from {source}\n" + yaml.safe_dump(tree, sort_keys=False))
    return target


def plan_for_run(cfg, out: Path, budget_tokens: float, seq_length: int = 4096, global_batch_size: int = 0) -> Path:
    """``plan.json`` for this run: the given ``data.plan``, or a fresh plan of the catalog for ``budget_tokens``."""
    if cfg.data.plan:
        return Path(cfg.data.plan)
    from nemo_smartpt.blend.plan_cli import PlanConfig, run

    catalog = run_catalog(cfg, out)
    plan_cfg = PlanConfig(
        catalog=str(catalog),
        budget_tokens=float(int(budget_tokens)),
        out=str(out / "plan"),
        phase_boundaries=list(cfg.data.phase_boundaries),
        seed=cfg.seed,
        # the caps count the split the run reads and keep room for its sample and batch rounding
        split=cfg.data.split,
        seq_length=seq_length,
        global_batch_size=global_batch_size,
    )
    return Path(run(plan_cfg)["json"])
