"""The four-learner study on the world: Pascal, Volta, Ampere, Hopper, BASE-RO and Hopper's token-matched baseline.

    python examples/studies/four_learners.py                 # the full study (3 seeds x 6 arms; see README.md)
    python examples/studies/four_learners.py --quick         # one seed, short runs: a smoke test of the study
    python examples/studies/four_learners.py --summarise-only   # rewrite table.md/plot.png from summary.json

Each (arm, seed) is one ``smartpt train`` on the world (``nemo_smartpt.world``, built once under ``--world-dir``)
with its own tokenizer, at identical sizes (steps x global batch x sequence length: the same tokens). Every run ends
with lm-evaluation-harness on the world's held-out tasks through the ``smartpt`` adapter (``eval.json``):
``world_knowledge`` (acc over all values of an attribute) and ``world_reasoning`` (greedy thought + answer, exact
match). Intervals are 95% two-stage bootstrap intervals over seeds and items (resample seeds, then items within each
seed); comparisons are paired (same seeds, same items).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nemo_smartpt.world.recipe import RLP_OVERRIDES, RLP_STEPS, WorldRecipe

HERE = Path(__file__).resolve().parent
# Hopper's RLP settings and every run's model and schedule: nemo_smartpt.world.recipe (shared with `smartpt demo`).
RLP = RLP_OVERRIDES
ARMS = {
    "pascal": ["+experiment=pascal"],
    "random_order": ["+experiment=volta", "data.arm=random_order"],
    "volta": ["+experiment=volta"],
    "ampere": ["+experiment=ampere"],
    "hopper": ["+experiment=hopper", *RLP],
    "hopper_token_matched": ["+experiment=hopper", *RLP, "schedule.rlp_baseline=token_matched"],
}
TRAINS_AS = {"hopper_token_matched": "ampere"}
"""Arms whose run is another arm's, step for step. Hopper's token-matched baseline replaces its RLP steps by next-token
steps over the same documents: with the same total steps that is Ampere's run (study 2 ran both: equal item for
item, in every seed). The study checks it before reusing the run (:func:`same_training` on both commands' resolved
configurations), and runs the arm itself if they differ (other ``--extra`` settings, say)."""
METRICS = {"knowledge": ("world_knowledge", "acc"), "reasoning": ("world_reasoning", "exact_match")}
COMPARISONS = [  # (metric, arm, baseline): stated in README.md before any run
    ("knowledge", "volta", "pascal"),
    ("knowledge", "volta", "random_order"),
    ("reasoning", "ampere", "volta"),
    ("reasoning", "hopper", "hopper_token_matched"),
]


RECIPE_FLAGS = ("seq_length", "global_batch_size", "micro_batch_size", "hidden_size", "num_layers", "heads",
                "position_embedding", "lr", "min_lr_ratio", "warmup")  # fmt: skip


def recipe_of(args) -> WorldRecipe:
    return WorldRecipe(**{k: getattr(args, k) for k in RECIPE_FLAGS})


def train_command(arm: str, seed: int, args, catalog: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "nemo_smartpt", "train", *ARMS[arm],
        f"seed={seed}", f"out_dir={out}",
        f"data.catalog={catalog}", f"data.tokenizer={catalog.parent / 'tokenizer'}",
        *recipe_of(args).overrides(args.iters),
        *([f"schedule.rlp_steps={args.rlp_steps}"] if arm.startswith("hopper") else []),
        *args.extra,
    ]  # fmt: skip


def resolved_job(arm: str, seed: int, args, catalog: Path) -> dict:
    """``smartpt train --cfg job`` of an arm's command (nothing trains): Bridge's container, our settings under
    ``smartpt`` and the resolved step schedule under ``schedule``. The out_dir is the same for every arm."""
    cmd = [*train_command(arm, seed, args, catalog, Path(args.out) / "resolved"), "--cfg", "job"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"{arm}: resolving the configuration failed; command: {' '.join(cmd)}")
    return job_of(result.stdout)


def job_of(text: str) -> dict:
    """What ``smartpt train --cfg job`` printed, as :func:`same_training` compares it: the YAML, and the schedule
    from its ``# schedule:`` comment line under ``schedule``."""
    import yaml

    return {**yaml.safe_load(text), "schedule": json.loads(text.split("# schedule: ", 1)[1].splitlines()[0])}


OBJECTIVE_KEYS = ("experiment", "rlp", "schedule")
"""Our settings that may differ between runs that train alike: the preset's name, and the RLP settings and RLP/matched
split of a run with no RLP step (the resolved schedule is compared instead)."""


def same_training(job: dict, other: dict) -> str | None:
    """None if two resolved jobs train alike step for step, else what differs.

    Alike: Bridge's containers are equal, our settings are equal but for :data:`OBJECTIVE_KEYS`, neither has an RLP
    step, and both take the same number of next-token steps (matched steps are next-token steps)."""
    for name, j in (("first", job), ("second", other)):
        if j["schedule"]["rlp_steps"]:
            return f"the {name} has {j['schedule']['rlp_steps']} RLP steps"
    steps = [j["schedule"]["ntp_steps"] + j["schedule"]["matched_ntp_steps"] for j in (job, other)]
    if steps[0] != steps[1]:
        return f"next-token steps differ: {steps[0]} vs {steps[1]}"
    strip = lambda j: {k: v for k, v in j.items() if k not in ("smartpt", "schedule")}  # noqa: E731
    differing = sorted(k for k in strip(job).keys() | strip(other).keys() if job.get(k) != other.get(k))
    ours = [job["smartpt"], other["smartpt"]]
    differing += sorted(
        f"smartpt.{k}"
        for k in ours[0].keys() | ours[1].keys()
        if k not in OBJECTIVE_KEYS and ours[0].get(k) != ours[1].get(k)
    )
    return f"settings differ: {', '.join(differing)}" if differing else None


def reused_as(row: dict, arm: str) -> dict:
    """``row`` (a run of ``TRAINS_AS[arm]``) as a run of ``arm``: its scores, zero seconds of its own."""
    return {**row, "arm": arm, "seconds": 0.0, "same_run_as": f"{row['arm']}-seed{row['seed']}"}


def run_one(arm: str, seed: int, args, catalog: Path) -> dict:
    out = Path(args.out) / f"{arm}-seed{seed}"
    cmd = train_command(arm, seed, args, catalog, out)
    # The run directory is the study's scratch: a previous study's run there (other settings) would be refused by
    # the run-directory guard, and a finished one would be resumed instead of retrained.
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"  # runs side by side: one core each, not oversubscribed
    started = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"{arm} seed {seed} failed (exit {result.returncode}); command: {' '.join(cmd)}")
    evaluation = json.loads((out / "eval.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = {"arm": arm, "seed": seed, "seconds": round(time.time() - started, 1), "command": " ".join(cmd)}
    for metric, (task, key) in METRICS.items():
        row[metric] = evaluation["per_item"][task][key]  # per held-out item, in document order
    rlp = [r for r in records if "rlp_reward_mean" in r]
    if rlp:
        quarter = max(len(rlp) // 4, 1)
        row["rlp_reward"] = [r["rlp_reward_mean"] for r in rlp]
        row["rlp_reward_first_quarter"] = statistics.mean(row["rlp_reward"][:quarter])
        row["rlp_reward_last_quarter"] = statistics.mean(row["rlp_reward"][-quarter:])
        row["truncation_rate"] = statistics.mean(r["rlp_truncation_rate"] for r in rlp)
    return row


def bootstrap(runs_by_arm: dict[str, list[dict]], metric: str, arms: list[str], draws: int = 2000, seed: int = 0):
    """Two-stage bootstrap of the mean of ``arms[0]`` (minus ``arms[1]`` if given): resample seeds, then items.

    The same resampled seeds and items serve every arm of a comparison (paired: the arms share seeds and items)."""
    rng = random.Random(seed)
    # A comparison is paired: only the seeds every arm in it finished (all of them, unless a study was cut).
    seeds = sorted(set.intersection(*({r["seed"] for r in runs_by_arm[a]} for a in arms)))
    scores = {a: {r["seed"]: r[metric] for r in runs_by_arm[a]} for a in arms}
    items = len(scores[arms[0]][seeds[0]])
    estimates = []
    for _ in range(draws):
        picked = [rng.choice(seeds) for _ in seeds]
        index = [[rng.randrange(items) for _ in range(items)] for _ in picked]
        means = [statistics.fmean(scores[a][s][i] for s, idx in zip(picked, index) for i in idx) for a in arms]
        estimates.append(means[0] - (means[1] if len(means) > 1 else 0.0))
    estimates.sort()
    low, high = estimates[int(0.025 * draws)], estimates[int(0.975 * draws) - 1]
    point = statistics.fmean(statistics.fmean(scores[arms[0]][s]) for s in seeds)
    if len(arms) > 1:
        point -= statistics.fmean(statistics.fmean(scores[arms[1]][s]) for s in seeds)
    return {"mean": point, "ci95": (high - low) / 2, "low": low, "high": high, "n": len(seeds), "items": items}


def table_order(run: dict) -> tuple[int, int]:
    """Sort key of a run in the study's files: by seed, then in the order of ``ARMS``."""
    return run["seed"], list(ARMS).index(run["arm"])


def read_runs(path: Path) -> list[dict]:
    """An earlier study's ``runs.json``; a missing or malformed file stops the study with its name."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--reuse {path}: cannot read a runs.json ({exc})") from None
    if not isinstance(runs, list) or not all(
        isinstance(r, dict) and {"arm", "seed", "seconds"} <= r.keys() for r in runs
    ):
        raise SystemExit(f"--reuse {path}: not a study's runs.json (a list of runs with arm, seed and seconds)")
    return runs


def with_reused(runs: list[dict], earlier: list[dict], arms: list[str], seeds: list[int]):
    """``(all runs, reused runs)``: this invocation's runs plus an earlier study's runs of the other arms (same
    seeds), in table order."""
    reused = [r for r in earlier if r["arm"] not in arms and r["seed"] in seeds]
    merged = sorted(runs + reused, key=table_order)
    return merged, reused


def summarise(runs: list[dict], command: str, wall: float, settings: dict) -> dict:
    by_arm: dict[str, list[dict]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], []).append(r)
    summary = {"command": command, "wall_seconds": round(wall, 1), "settings": settings, "arms": {}, "comparisons": []}
    for arm in (a for a in ARMS if a in by_arm):
        summary["arms"][arm] = {metric: bootstrap(by_arm, metric, [arm]) for metric in METRICS}
    for metric, arm, base in COMPARISONS:
        if arm in by_arm and base in by_arm:
            diff = bootstrap(by_arm, metric, [arm, base])
            summary["comparisons"].append({"metric": metric, "arm": arm, "baseline": base, **diff})
    summary["hopper_seeds"] = [
        {k: r[k] for k in ("seed", "rlp_reward_first_quarter", "rlp_reward_last_quarter", "truncation_rate")}
        for r in by_arm.get("hopper", [])
    ]
    return summary


def write_outputs(summary: dict, runs: list[dict], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    (results / "runs.json").write_text(json.dumps(runs))
    lines = [
        "# The four-learner study on the world",
        "",
        f"Command: `{summary['command']}`  ",
        f"Wall time: {summary['wall_seconds'] / 60:.1f} min; settings {json.dumps(summary['settings'])}.",
        *(
            [
                f"**Incomplete**: {summary['runs_finished']} of {summary['runs_planned']} runs finished (study cut); "
                "each arm is summarised over the seeds it finished, each comparison over the seeds both arms finished."
            ]
            if summary.get("complete") is False
            else []
        ),
        *(
            [
                f"Reused from `{summary['reused']['from']}` (an earlier invocation; not rerun): "
                f"{', '.join(summary['reused']['arms'])}, {summary['reused']['run_seconds']:.0f} s of runs."
            ]
            if summary.get("reused")
            else []
        ),
        *(
            f"`{arm}` is the run of `{source}` (the same training, resolved and compared: `same_training`)."
            for arm, source in summary.get("same_run_as", {}).items()
        ),
        "",
        "| arm | knowledge acc | reasoning exact match | seeds |",
        "|---|---|---|---|",
    ]
    for arm, m in summary["arms"].items():
        cells = [f"{m[k]['mean']:.3f} ± {m[k]['ci95']:.3f}" for k in METRICS]
        lines.append(f"| {arm} | {' | '.join(cells)} | {m['knowledge']['n']} |")
    lines += ["", "| comparison | metric | difference (95% CI) |", "|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(
            f"| {c['arm']} - {c['baseline']} | {c['metric']} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |"
        )
    lines += ["", "| hopper seed | RLP reward, first quarter | last quarter | truncation rate |", "|---|---|---|---|"]
    for h in summary["hopper_seeds"]:
        lines.append(
            f"| {h['seed']} | {h['rlp_reward_first_quarter']:.4f} | {h['rlp_reward_last_quarter']:.4f} "
            f"| {h['truncation_rate']:.2f} |"
        )
    lines += ["", "± is the half-width of a 95% two-stage bootstrap interval over seeds and held-out items."]
    (results / "table.md").write_text("\n".join(lines) + "\n")
    plot(summary, results / "plot.png", runs)
    print("\n".join(lines))


def plot(summary: dict, path: Path, runs: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    hopper = [r for r in runs or [] if r["arm"] == "hopper" and r.get("rlp_reward")]
    fig, axes = plt.subplots(1, 3 if hopper else 2, figsize=(16 if hopper else 11, 3.8))
    for ax, metric in zip(axes, METRICS):
        means = [summary["arms"][a][metric]["mean"] for a in arms]
        errors = [summary["arms"][a][metric]["ci95"] for a in arms]
        ax.bar(arms, means, yerr=errors, capsize=4)
        ax.set_title(f"held-out {metric} (95% CI over seeds and items)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    if hopper:
        for r in hopper:
            axes[2].plot(range(1, len(r["rlp_reward"]) + 1), r["rlp_reward"], label=f"seed {r['seed']}", alpha=0.8)
        axes[2].axhline(0.0, color="grey", linewidth=0.8)
        axes[2].set_title("hopper: RLP reward (mean information gain) per step")
        axes[2].set_xlabel("RLP step")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=500, help="steps of every arm (study 3; study 2: 380)")
    base = WorldRecipe()  # the model and schedule flags default to the shared recipe
    for flag in RECIPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=type(getattr(base, flag)), default=getattr(base, flag))
    parser.add_argument("--rlp-steps", type=int, default=RLP_STEPS, help="Hopper's RLP steps (the last of --iters)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (each with OMP_NUM_THREADS=1)")
    parser.add_argument("--quick", action="store_true", help="one seed, 80 steps (4 RLP): a smoke test")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--world-dir", default="runs/world")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--summarise-only", action="store_true", help="rewrite table.md and plot.png")
    parser.add_argument(
        "--summarise-partial",
        action="store_true",
        help="summarise the runs a cut study finished (<out>/runs.partial.jsonl), marked as incomplete",
    )
    parser.add_argument(
        "--reuse",
        metavar="RUNS_JSON",
        help="take the runs of the arms not in --arms from this runs.json (an earlier study's), to rerun some arms "
        "only; summary.json and table.md say which runs were reused",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.iters, args.rlp_steps = args.seeds[:1], 80, 4

    results = Path(args.results)
    if args.summarise_only:
        summary = json.loads((results / "summary.json").read_text())
        write_outputs(summary, json.loads((results / "runs.json").read_text()), results)
        return 0
    command = "python examples/studies/four_learners.py " + " ".join(sys.argv[1:])
    keys = ("seeds", "iters", *RECIPE_FLAGS, "rlp_steps", "jobs")
    settings = {k: getattr(args, k) for k in keys} | {"rlp": RLP, "extra": args.extra}
    started_file = Path(args.out) / "study_started.json"
    if args.summarise_partial:
        start = json.loads(started_file.read_text())
        lines = (Path(args.out) / "runs.partial.jsonl").read_text().splitlines()
        finished = sorted((json.loads(line) for line in lines), key=table_order)
        # Every finished run counts; comparisons pair the seeds both arms finished (bootstrap()).
        runs = finished
        summary = summarise(runs, start["command"], time.time() - start["time"], start["settings"])
        planned = len(start["settings"]["seeds"]) * len(ARMS)
        summary.update(complete=False, runs_finished=len(finished), runs_summarised=len(runs), runs_planned=planned)
        write_outputs(summary, runs, results)
        return 0
    earlier = read_runs(Path(args.reuse)) if args.reuse else None  # checked before any training, not after it
    from nemo_smartpt.world.build import ensure_world

    started = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started_file.write_text(json.dumps({"time": started, "command": command, "settings": settings}))
    catalog = ensure_world(args.world_dir)
    same_as = {}  # arm -> the arm whose runs it reuses (TRAINS_AS, where the resolved configurations agree)
    for arm, source in TRAINS_AS.items():
        if arm in args.arms and source in args.arms:
            with ThreadPoolExecutor(max_workers=2) as pool:  # two processes that only import and resolve
                jobs = pool.map(lambda a: resolved_job(a, args.seeds[0], args, catalog), (arm, source))
                differs = same_training(*jobs)
            if differs is None:
                same_as[arm] = source
            print(f"{arm}: " + (f"the run of {source} (same training)" if differs is None else f"trained ({differs})"))
    # Hopper's runs first: they take twice as long (RLP steps), and one started last would leave a core idle.
    arms = [a for a in args.arms if a not in same_as]
    jobs = sorted(((arm, seed) for seed in args.seeds for arm in arms), key=lambda job: job[0] != "hopper")

    partial = Path(args.out) / "runs.partial.jsonl"  # every finished run, as it finishes (a cut study keeps them)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    lock = threading.Lock()

    def one(job):
        row = run_one(*job, args, catalog)
        shown = {k: v for k, v in row.items() if k not in ("knowledge", "reasoning", "rlp_reward", "command")}
        shown.update({m: round(statistics.fmean(row[m]), 3) for m in METRICS})
        with lock:
            print(json.dumps(shown), flush=True)
            with partial.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process; threads only wait
        runs = list(pool.map(one, jobs))
    runs += [reused_as(r, arm) for arm, source in same_as.items() for r in runs if r["arm"] == source]
    runs.sort(key=table_order)
    wall = time.time() - started
    reused = []
    if earlier is not None:
        runs, reused = with_reused(runs, earlier, args.arms, args.seeds)
    summary = summarise(runs, command, wall, settings)
    if same_as:
        summary["same_run_as"] = same_as
    if reused:
        summary["reused"] = {
            "from": args.reuse,
            "arms": sorted({r["arm"] for r in reused}, key=list(ARMS).index),
            "run_seconds": round(sum(r["seconds"] for r in reused), 1),
        }
    write_outputs(summary, runs, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
