"""The four-learner study on CPU: Pascal vs Volta vs Ampere vs Hopper, same budget and data, several seeds.

    python examples/studies/four_learners.py                       # the committed run (see results/)
    python examples/studies/four_learners.py --seeds 1 2 --iters 100 --out runs/study_quick

Each (arm, seed) is one ``smartpt train +experiment=ARM seed=S`` on the bundled corpus at identical sizes (the same
number of optimizer steps, global batch and sequence length, so the same tokens); Hopper spends its last
``schedule.rlp_steps`` steps on RLP. Every run ends with the held-out multiple-choice evaluation (knowledge: facts of
the synthetic world; reasoning: unseen three-step word problems). The script writes ``results.json`` (every run),
``table.md`` (mean ± sample std over seeds) and ``plot.png`` into ``--results``.

To run the papers' comparison on your own data, point every arm at your catalog: ``--extra data.catalog=PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("pascal", "volta", "ampere", "hopper")
HERE = Path(__file__).resolve().parent


def run_one(arm: str, seed: int, args) -> dict:
    out = Path(args.out) / f"{arm}-seed{seed}"
    cmd = [
        sys.executable,
        "-m",
        "nemo_smartpt",
        "train",
        f"+experiment={arm}",
        f"seed={seed}",
        f"out_dir={out}",
        f"data.bundled_dir={args.bundled_dir}",
        f"train.train_iters={args.iters}",
        f"model.seq_length={args.seq_length}",
        f"train.global_batch_size={args.global_batch_size}",
        f"train.micro_batch_size={args.micro_batch_size}",
        f"model.hidden_size={args.hidden_size}",
        f"model.ffn_hidden_size={4 * args.hidden_size}",
        f"model.num_layers={args.num_layers}",
        *([f"schedule.rlp_steps={args.rlp_steps}"] if arm == "hopper" else []),
        *args.extra,
    ]
    started = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    seconds = time.time() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"{arm} seed {seed} failed (exit {result.returncode}); command: {' '.join(cmd)}")
    evaluation = json.loads((out / "eval.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ntp = [r["lm_loss"] for r in records if "lm_loss" in r]
    return {
        "arm": arm,
        "seed": seed,
        "seconds": round(seconds, 1),
        "knowledge_acc": evaluation["knowledge"]["acc"],
        "reasoning_acc": evaluation["reasoning"]["acc"],
        "final_ntp_loss": sum(ntp[-5:]) / len(ntp[-5:]),
        "rlp_reward_mean": next((r["rlp_reward_mean"] for r in reversed(records) if "rlp_reward_mean" in r), None),
    }


def summarise(runs: list[dict]) -> str:
    def cell(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    lines = [
        "| learner | knowledge acc | reasoning acc | final next-token loss | runs |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rows = [r for r in runs if r["arm"] == arm]
        if rows:
            lines.append(
                f"| {arm} | {cell([r['knowledge_acc'] for r in rows])} | {cell([r['reasoning_acc'] for r in rows])} "
                f"| {cell([r['final_ntp_loss'] for r in rows])} | {len(rows)} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("knowledge_acc", "reasoning_acc"), ("knowledge", "multi-step reasoning")):
        means, spreads = [], []
        for arm in ARMS:
            values = [r[key] for r in runs if r["arm"] == arm]
            means.append(statistics.mean(values))
            spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.bar(ARMS, means, yerr=spreads, capsize=4, color=["#999", "#5b8", "#48c", "#c64"])
        ax.axhline(0.25, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_title(f"held-out {title} (4-way)")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--rlp-steps", type=int, default=20, help="Hopper's RLP steps (the last of --iters)")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--bundled-dir", default="runs/bundled")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument(
        "--summarise-only", action="store_true", help="rewrite table.md and plot.png from results.json"
    )
    args = parser.parse_args()

    results = Path(args.results)
    if args.summarise_only:
        saved = json.loads((results / "results.json").read_text())
        write_summary(saved["runs"], saved["command"], saved["wall_seconds"], saved.get("args", {}), results)
        return 0
    started = time.time()
    runs = []
    for seed in args.seeds:
        for arm in ARMS:
            runs.append(run_one(arm, seed, args))
            print(json.dumps(runs[-1]), flush=True)
    wall = time.time() - started
    results.mkdir(parents=True, exist_ok=True)
    command = "python examples/studies/four_learners.py " + " ".join(sys.argv[1:])
    settings = {k: getattr(args, k) for k in ("seeds", "iters", "global_batch_size", "seq_length", "hidden_size")}
    record = {"command": command, "wall_seconds": wall, "args": settings, "runs": runs}
    (results / "results.json").write_text(json.dumps(record, indent=2))
    write_summary(runs, command, wall, settings, results)
    return 0


def write_summary(runs: list[dict], command: str, wall: float, settings: dict, results: Path) -> None:
    table = summarise(runs)
    (results / "table.md").write_text(
        f"# Four learners on the bundled corpus\n\nCommand: `{command.strip()}`  \n"
        f"Wall time: {wall / 60:.1f} min on a 2-core CPU machine; settings {json.dumps(settings)}.\n\n{table}\n\n"
        "Accuracy is 4-way multiple choice by log-likelihood (chance 0.25); ± is the sample standard deviation "
        "over seeds. The next-token loss is each arm's own training loss over its last 5 steps: the arms train on "
        "different mixtures (Pascal on far more noisy crawl), so it is not a quality comparison.\n"
    )
    plot(runs, results / "plot.png")
    print(table)
    print(f"wall time {wall / 60:.1f} min; results in {results}")


if __name__ == "__main__":
    sys.exit(main())
