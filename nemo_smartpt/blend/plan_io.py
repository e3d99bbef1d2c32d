"""A plan on disk and on screen: ``plan.json``, a text table, a PNG chart, and exports for Megatron-LM and Bridge.

``plan.json`` is the contract with the rest of the project (the phased dataset, the demo)::

    {"budget_tokens": int, "seed": int, "split": str, "seq_length": int, "global_batch_size": int,
     "sources": [{"name", "prefixes", "tokens", "documents", "quality", "category", "max_epochs",
                  "planned_tokens", "epochs", "prefix_tokens", "target_share"}],
     "phases": [{"name", "start_token", "end_token", "weights": {source: share summing to 1},
                 "megatron_lm_data_path": "w1 prefix1 w2 prefix2 ...",
                 "bridge_override": "dataset.blend=[['prefix1','prefix2'],[w1,w2]]"}],
     "baselines": {"natural": {source: w}, "random_order": {source: w}}}

The exports let a user of plain Megatron-LM (``--data-path``) or Megatron-Bridge (the ``blend`` field of its
``GPTDatasetConfig``: ``(prefixes, weights)``) run one phase of the plan without our dataset. A source with several
prefixes is split across them in proportion to their tokens, so all its prefixes are read the same number of epochs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nemo_smartpt.blend.planner import PhasePlan, Plan, SourcePlan
from nemo_smartpt.overrides import hydra_quote


class PlanFileError(ValueError):
    """A ``plan.json`` that is missing or lacks the fields of the contract."""


def prefix_weights(plan: Plan, phase: PhasePlan) -> list[tuple[str, float]]:
    """The phase's blend per Megatron prefix: a source's weight split across its prefixes by token count."""
    out = []
    for src in plan.sources:
        weight = phase.weights.get(src.name, 0.0)
        if weight <= 0:
            continue  # a zero-weight dataset only costs Megatron an index build
        total = sum(src.prefix_tokens)
        out.extend((prefix, weight * n / total) for prefix, n in zip(src.prefixes, src.prefix_tokens))
    return out


def megatron_lm_data_path(plan: Plan, phase: PhasePlan) -> str:
    """Megatron-LM's ``--data-path`` value: ``"w1 prefix1 w2 prefix2 ..."`` (weights need not sum to 1 there)."""
    return " ".join(f"{w:.12g} {prefix}" for prefix, w in prefix_weights(plan, phase))


def bridge_override(plan: Plan, phase: PhasePlan) -> str:
    """Megatron-Bridge override setting ``dataset.blend`` (prefixes, weights) for this phase, in Hydra grammar."""
    pairs = prefix_weights(plan, phase)
    prefixes = ",".join(hydra_quote(p) for p, _ in pairs)
    weights = ",".join(f"{w:.12g}" for _, w in pairs)
    return f"dataset.blend=[[{prefixes}],[{weights}]]"


_SOURCE_KEYS = (
    "name",
    "prefixes",
    "tokens",
    "documents",
    "quality",
    "category",
    "max_epochs",
    "planned_tokens",
    "epochs",
)
_PHASE_KEYS = ("name", "start_token", "end_token", "weights")


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The JSON-ready ``plan.json`` structure."""
    sources = []
    for s in plan.sources:
        entry = {key: getattr(s, key) for key in _SOURCE_KEYS}
        entry.update(prefix_tokens=s.prefix_tokens, target_share=s.target_share)
        sources.append(entry)
    phases = [
        {
            "name": ph.name,
            "start_token": ph.start_token,
            "end_token": ph.end_token,
            "weights": dict(ph.weights),
            "megatron_lm_data_path": megatron_lm_data_path(plan, ph),
            "bridge_override": bridge_override(plan, ph),
        }
        for ph in plan.phases
    ]
    return {
        "budget_tokens": plan.budget_tokens,
        "seed": plan.seed,
        "sources": sources,
        "phases": phases,
        "baselines": {k: dict(v) for k, v in plan.baselines.items()},
        "split": plan.split,
        "seq_length": plan.seq_length,
        "global_batch_size": plan.global_batch_size,
    }


def plan_from_dict(data: dict[str, Any], where: str = "plan") -> Plan:
    """Rebuild a :class:`Plan` from :func:`plan_to_dict` output; raise :class:`PlanFileError` on a missing field."""

    def need(mapping: Any, keys: tuple[str, ...], what: str) -> None:
        missing = [k for k in keys if not isinstance(mapping, dict) or k not in mapping]
        if missing:
            raise PlanFileError(f"{where}: {what} lacks {missing}")

    need(data, ("budget_tokens", "seed", "sources", "phases", "baselines"), "the plan")
    sources = []
    for i, s in enumerate(data["sources"]):
        need(s, _SOURCE_KEYS, f"sources[{i}]")
        sources.append(
            SourcePlan(
                **{k: s[k] for k in _SOURCE_KEYS},
                # Plans written by other tools may lack the split; the prefixes then share the tokens equally.
                prefix_tokens=s.get("prefix_tokens")
                or [s["tokens"] // max(len(s["prefixes"]), 1)] * len(s["prefixes"]),
                target_share=s.get("target_share"),
            )
        )
    phases = []
    for i, ph in enumerate(data["phases"]):
        need(ph, _PHASE_KEYS, f"phases[{i}]")
        phases.append(PhasePlan(**{k: ph[k] for k in _PHASE_KEYS}))
    need(data["baselines"], ("natural", "random_order"), "baselines")
    return Plan(
        data["budget_tokens"],
        data["seed"],
        sources,
        phases,
        data["baselines"],
        split=data.get("split"),
        seq_length=int(data.get("seq_length") or 0),
        global_batch_size=int(data.get("global_batch_size") or 0),
    )


def save_plan(plan: Plan, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(plan.to_dict(), f, indent=2)
        f.write("\n")


def read_plan_json(path: str) -> dict[str, Any]:
    """The raw ``plan.json`` mapping (what the phased dataset consumes), with a clear error naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise PlanFileError(f"plan file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise PlanFileError(f"{path}: not valid JSON: {exc}") from None


def load_plan(path: str) -> Plan:
    """Read a ``plan.json`` written by :func:`save_plan` (or by hand, following the same contract)."""
    return plan_from_dict(read_plan_json(path), where=path)


def _tokens(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_table(plan: Plan) -> str:
    """A fixed-width table: one row per source, the share of each phase, both baselines, planned tokens and epochs."""
    header = ["source", "tier", "category", "tokens", "cap", *(ph.name for ph in plan.phases)]
    header += ["natural", "rand_order", "planned", "epochs"]
    rows = []
    for s in plan.sources:
        shares = [f"{100 * ph.weights.get(s.name, 0.0):.2f}%" for ph in plan.phases]
        base = [f"{100 * plan.baselines[k].get(s.name, 0.0):.2f}%" for k in ("natural", "random_order")]
        pin = "" if s.target_share is None else f" (pinned {100 * s.target_share:.0f}%)"
        rows.append(
            [s.name, s.quality, s.category, _tokens(s.tokens), f"{s.max_epochs:g}", *shares, *base]
            + [_tokens(s.planned_tokens), f"{s.epochs:.2f}{pin}"]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    phases = ", ".join(f"{ph.name} [{_tokens(ph.start_token)}, {_tokens(ph.end_token)})" for ph in plan.phases)
    out = [f"blend plan: {_tokens(plan.budget_tokens)} tokens, seed {plan.seed}; {phases}", line(header)]
    out += ["  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    for ph in plan.phases:
        out += [
            "",
            f"{ph.name} --data-path: {megatron_lm_data_path(plan, ph)}",
            f"{ph.name} bridge: {bridge_override(plan, ph)}",
        ]
    return "\n".join(out) + "\n"


def save_chart(plan: Plan, path: str) -> None:
    """PNG bar chart: token share of each source in each phase, with the run's epochs (and cap) at the right."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes; must precede pyplot
    import matplotlib.pyplot as plt

    n, k = len(plan.sources), len(plan.phases)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.45 * n * max(k, 1) ** 0.5))
    for j, ph in enumerate(plan.phases):
        ys = [i + j * height for i in range(n)]
        shares = [100 * ph.weights.get(s.name, 0.0) for s in plan.sources]
        ax.barh(ys, shares, height=height, label=f"{ph.name} ({_tokens(ph.tokens)} tokens)")
    top = max(100 * w for ph in plan.phases for w in ph.weights.values()) or 1.0
    for i, s in enumerate(plan.sources):
        ax.text(top * 1.02, i + 0.4 - height / 2, f"{s.epochs:.2f} ep / cap {s.max_epochs:g}", va="center", fontsize=8)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(n)], [f"{s.name} ({s.quality})" for s in plan.sources])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("share of the phase's tokens (%)")
    ax.set_title(f"blend plan, {_tokens(plan.budget_tokens)} tokens")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(n, 1)), ncol=max(k, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plan_outputs(plan: Plan, out_dir: str) -> dict[str, str]:
    """Write ``plan.json``, ``plan.txt`` and ``plan.png`` into ``out_dir``; return their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"plan.{kind}") for kind in ("json", "txt", "png")}
    save_plan(plan, paths["json"])
    with open(paths["txt"], "w", encoding="utf-8") as f:
        f.write(format_table(plan))
    save_chart(plan, paths["png"])
    return paths
