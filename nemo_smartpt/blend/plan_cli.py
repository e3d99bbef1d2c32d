"""``smartpt plan``: catalog -> multi-phase blend plan (``plan.json``, ``plan.txt``, ``plan.png``).

Examples::

    smartpt plan catalog=conf/catalog/example.yaml budget_tokens=2e5 out=runs/plan
    smartpt plan catalog=... budget_tokens=1e9 phase_boundaries=[0.8] phases.1.crawl_tiers=[high]
    smartpt plan catalog=... budget_tokens=1e9 out=runs/sweep sweep.category=math sweep.epochs=[1,2,4,6]

The sweep writes the normal plan in ``out`` and one plan per repeat count in ``out/<category>_x<count>/``, plus
``out/sweep.json`` listing them, so a Hydra multirun can take ``plan=...`` from that list.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from nemo_smartpt.blend.catalog import CatalogError, load_catalog
from nemo_smartpt.blend.plan_io import PlanFileError, format_table, write_plan_outputs
from nemo_smartpt.blend.planner import PhasePolicy, PlanError, default_phase_policies, plan_blend
from nemo_smartpt.blend.sweep import epoch_sweep
from nemo_smartpt.overrides import OverrideError, build_config, describe


@dataclass
class SweepConfig:
    """Epoch-estimation sweep (the paper's repeat ablation for one domain category)."""

    category: str = ""
    """Category whose sources are swept (e.g. ``math``); empty means no sweep."""
    epochs: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 6.0])
    """Repeat counts, one plan each; the added tokens come from the lowest-quality crawl of each phase."""


@dataclass
class PlanConfig:
    """Settings of ``smartpt plan``."""

    catalog: str = ""
    """Path of the catalog YAML (required); relative prefixes in it resolve against its directory."""
    budget_tokens: float = 0.0
    """Tokens of the whole run (required), e.g. ``1e9``."""
    out: str = "plan"
    """Output directory for plan.json, plan.txt and plan.png."""
    phase_boundaries: list[float] = field(default_factory=lambda: [0.6])
    """Fractions of the budget where the next phase starts: ``[0.6]`` = 60% / 40% (the Nemotron-CC 15T split)."""
    phases: list[PhasePolicy] = field(default_factory=default_phase_policies)
    """One policy per phase (``phases.1.crawl_tiers=[high]``, ``phases.1.emphasis_multiplier=3``, ...)."""
    seed: int = 1234
    """Seed recorded in the plan for the dataset that serves it."""
    split: str = "98,1,1"
    """megatron-core train/valid/test split of every prefix; caps count the train part (what training reads), so
    train with the same ``dataset.split`` (``smartpt train`` passes its ``data.split``)."""
    seq_length: int = 4096
    """Tokens per training sample: a phase must hold at least one, and each cap keeps room for the dataset's
    sample rounding (see ``plan_blend``)."""
    global_batch_size: int = 0
    """Samples per optimizer step, if known: caps also keep room for phase ends rounded to whole batches."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Optional epoch-estimation sweep."""
    quiet: bool = False
    """Do not print the table."""


def help_text() -> str:
    return "\n\n".join(
        [
            "usage: smartpt plan catalog=PATH budget_tokens=N [out=DIR] [key=value ...]",
            describe(PlanConfig),
            describe(SweepConfig, "sweep."),
            describe(PhasePolicy, "phases.<i>."),
        ]
    )


def run(cfg: PlanConfig) -> dict[str, str]:
    """Plan (and sweep) from a config; return the written paths of the main plan."""
    if not cfg.catalog:
        raise OverrideError("catalog=PATH is required (a YAML catalog of sources)")
    if not cfg.budget_tokens:
        raise OverrideError("budget_tokens=N is required (tokens of the whole run, e.g. 1e9)")
    if cfg.seq_length < 1 or cfg.global_batch_size < 0:
        raise OverrideError(
            f"seq_length must be >= 1 and global_batch_size >= 0, got {cfg.seq_length} and {cfg.global_batch_size}"
        )
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise OverrideError(
            f"out={cfg.out} is a file; out must be a directory (plan.json, plan.txt, plan.png go in it)"
        )
    catalog = load_catalog(cfg.catalog, split=cfg.split)
    kwargs = dict(phase_boundaries=list(cfg.phase_boundaries), policies=list(cfg.phases), seed=cfg.seed)
    plan = plan_blend(
        catalog, cfg.budget_tokens, seq_length=cfg.seq_length, global_batch_size=cfg.global_batch_size, **kwargs
    )
    try:
        paths = write_plan_outputs(plan, cfg.out)
    except OSError as exc:
        raise OverrideError(f"out={cfg.out}: cannot write the plan there: {exc.strerror or exc}") from None
    if not cfg.quiet:
        print(format_table(plan), end="")
        print(f"wrote {paths['json']}, {paths['txt']}, {paths['png']}")
    if cfg.sweep.category:
        index = {}
        for k, swept in epoch_sweep(catalog, cfg.budget_tokens, cfg.sweep.category, list(cfg.sweep.epochs), **kwargs):
            swept.split = plan.split
            sub = os.path.join(cfg.out, f"{cfg.sweep.category}_x{k:g}")
            index[f"{k:g}"] = write_plan_outputs(swept, sub)["json"]
        with open(os.path.join(cfg.out, "sweep.json"), "w", encoding="utf-8") as f:
            json.dump({"category": cfg.sweep.category, "plans": index}, f, indent=2)
        if not cfg.quiet:
            print(f"sweep over {cfg.sweep.category} epochs {list(index)}: plans in {', '.join(index.values())}")
    return paths


def _quote_split(arg: str) -> str:
    """Hydra reads a bare ``split=98,1,1`` as a sweep; it is one megatron-core split string, so quote it."""
    key, sep, value = arg.partition("=")
    if sep and key.lstrip("+") == "split" and "," in value and value[:1] not in ("'", '"', "["):
        return f"{key}='{value}'"
    return arg


def main(args: list[str]) -> int:
    """Entry point of ``smartpt plan``; returns the exit code (2 on bad input, with a one-line message)."""
    if any(a in ("-h", "--help", "help") for a in args):
        print(help_text())
        return 0
    try:
        run(build_config(PlanConfig, [_quote_split(a) for a in args]))
    except (OverrideError, CatalogError, PlanError, PlanFileError) as exc:
        print(f"smartpt plan: error: {exc}", file=sys.stderr)
        return 2
    return 0
