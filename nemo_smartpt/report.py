"""A run report a person can read: Markdown with PNG plots, from what a ``smartpt train`` run directory holds.

Inputs (all written by the run): ``plan/plan.json`` and ``plan/plan.png`` (the blend per phase), ``metrics.jsonl``
(per-step losses by source and phase, RLP metrics), ``eval.json`` (lm-eval results). Outputs: ``report.md`` and
``loss_by_source.png``, ``loss_by_phase.png``, ``rlp.png`` beside it. Matplotlib with the Agg backend only.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, (int, float)):
                steps, values = out.setdefault(key[len(prefix) :], ([], []))
                steps.append(record["step"])
                values.append(value)
    return out


def _plot(
    series: dict, title: str, ylabel: str, path: Path, switch_step: int | None = None, hline: tuple | None = None
) -> bool:
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in sorted(series.items()):
        ax.plot(steps, values, marker=".", label=name)
    if switch_step is not None:
        ax.axvline(switch_step, color="grey", linestyle="--", label="phase switch")
    if hline is not None:
        ax.axhline(hline[0], color="red", linestyle=":", label=hline[1])
        ax.set_ylim(0, hline[0] * 1.15)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _thought_cap(run: Path) -> int | None:
    """``rlp.max_thought_tokens`` of the run (its ``smartpt_config.json``)."""
    config = run / "smartpt_config.json"
    if not config.exists():
        return None
    return json.loads(config.read_text()).get("rlp", {}).get("max_thought_tokens")


def evaluation_section(results: dict) -> list[str]:
    """lm-eval's results as a table (value ± standard error, items) and the first generations of each task."""
    lines = ["## Held-out evaluation (lm-evaluation-harness, `smartpt` adapter)", ""]
    lines += ["| task | metric | value | ± stderr | items |", "|---|---|---|---|---|"]
    counts = results.get("n-samples", {})
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):  # "metric,filter" only
                continue
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            err = f"{stderr:.3f}" if isinstance(stderr, (int, float)) else "n/a"
            n = counts.get(task, {}).get("effective", "")
            lines.append(f"| {task} | {key.replace(',none', '')} | {value:.3f} | {err} | {n} |")
    lines.append("")
    for task, examples in results.get("examples", {}).items():
        lines += [f"First generations of `{task}` (greedy):", ""]
        for example in examples:
            shown = (example["prompt"] + example["response"]).strip()
            lines += ["```", shown, "```", f"extracted `{example['answer']}`, target `{example['target']}`", ""]
    return lines


def _first_step_of_phase(records: list[dict]) -> int | None:
    phases = [r.get("phase") for r in records]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            return records[i]["step"]
    return None


def write_report(run_dir: str | Path, title: str, about_data: str, extra_sections: list[str] | None = None) -> Path:
    """Write ``run_dir/report.md`` (and its plots); return its path."""
    run = Path(run_dir)
    records = read_metrics(run)
    switch = _first_step_of_phase(records)
    lines = [f"# {title}", "", "## Data", "", about_data, ""]
    plan_path = run / "plan" / "plan.json"
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        lines += ["## Blend plan", "", "![blend per phase](plan/plan.png)", "", "```"]
        lines += [(run / "plan" / "plan.txt").read_text().split("\n\n")[0].rstrip(), "```", ""]
        for phase in plan["phases"]:
            top = sorted(phase["weights"].items(), key=lambda kv: -kv[1])
            share = ", ".join(f"{k} {v:.0%}" for k, v in top if v > 0)
            lines.append(f"- **{phase['name']}** (tokens {phase['start_token']}-{phase['end_token']}): {share}")
        lines.append("")
    if records:
        lines += ["## Training", ""]
        first, last = records[0], records[-1]
        loss_key = "lm_loss"
        ntp = [r for r in records if loss_key in r]
        if ntp:
            lines.append(
                f"Next-token loss {ntp[0][loss_key]:.3f} at step {ntp[0]['step']} -> {ntp[-1][loss_key]:.3f} at step {ntp[-1]['step']}."
            )
        if switch is not None:
            lines.append(f"Phase switch at step {switch}.")
        lines.append(f"Steps {first['step']}-{last['step']}, {last['consumed_samples']} samples consumed.")
        lines.append("")
        if _plot(
            _series(records, "loss/source/"), "next-token loss by source", "loss", run / "loss_by_source.png", switch
        ):
            lines += ["![loss by source](loss_by_source.png)", ""]
        if _plot(
            _series(records, "loss/phase/"), "next-token loss by phase", "loss", run / "loss_by_phase.png", switch
        ):
            lines += ["![loss by phase](loss_by_phase.png)", ""]
        rlp = _series(records, "rlp_")
        if "reward_mean" in rlp:
            _plot({"reward mean": rlp["reward_mean"]}, "RLP reward (information gain)", "nats", run / "rlp_reward.png")
            cap = _thought_cap(run)
            _plot(
                {"thought length": rlp["thought_length"]},
                "RLP thought length",
                "tokens",
                run / "rlp_thought.png",
                hline=(cap, f"truncation cap ({cap})") if cap else None,
            )
            rlp_rows = [r for r in records if "rlp_reward_mean" in r]
            lines += ["## RLP", "", "![rlp reward](rlp_reward.png) ![rlp thought length](rlp_thought.png)", ""]
            lines += [
                "| step | reward mean | positive gain | thought length | truncation | clip frac |",
                "|---|---|---|---|---|---|",
            ]
            for r in rlp_rows:
                lines.append(
                    f"| {r['step']} | {r.get('rlp_reward_mean', float('nan')):.4f} | "
                    f"{r.get('rlp_positive_gain_fraction', float('nan')):.2f} | {r.get('rlp_thought_length', float('nan')):.1f} | "
                    f"{r.get('rlp_truncation_rate', float('nan')):.2f} | {r.get('rlp_clip_fraction', float('nan')):.3f} |"
                )
            lines.append("")
    eval_path = run / "eval.json"
    if eval_path.exists():
        lines += evaluation_section(json.loads(eval_path.read_text()))
    for section in extra_sections or []:
        lines += [section, ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path
