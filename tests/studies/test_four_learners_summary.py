"""The study's summariser (examples/studies/four_learners.py) over a small runs.json made here: no training.

The full study trains 18 models (minutes each on a CPU), too long for CI; what CI checks is that the numbers the
README reports come out of the per-item scores correctly: means against a float64 reference, paired intervals,
the RLP quarters per hopper seed, and table.md / plot.png regenerated from summary.json by ``--summarise-only``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest


def _runs(items: int = 30) -> list[dict]:
    rng = random.Random(7)
    runs = []
    for seed in (1, 2, 3):
        base_k = [float(rng.random() < 0.3) for _ in range(items)]
        base_r = [float(rng.random() < 0.2) for _ in range(items)]
        for arm in ("pascal", "random_order", "volta", "ampere", "hopper", "hopper_token_matched"):
            row = {"arm": arm, "seed": seed, "knowledge": list(base_k), "reasoning": list(base_r)}
            if arm == "volta":  # volta: pascal's scores plus one more right answer on every item it got wrong
                row["knowledge"] = [1.0] * items
            if arm == "hopper":
                reward = [-0.5 + 0.01 * step + 0.001 * seed for step in range(40)]
                row.update(rlp_reward=reward, truncation_rate=0.25)
                row["rlp_reward_first_quarter"] = float(np.mean(reward[:10]))
                row["rlp_reward_last_quarter"] = float(np.mean(reward[-10:]))
            runs.append(row)
    return runs


def test_means_intervals_and_pairing(four_learners):
    runs = _runs()
    summary = four_learners.summarise(runs, "python examples/studies/four_learners.py", 12.5, {"iters": 1})
    for arm in ("pascal", "volta"):
        scores = np.array([r["knowledge"] for r in runs if r["arm"] == arm], dtype=np.float64)
        got = summary["arms"][arm]["knowledge"]
        assert got["mean"] == pytest.approx(scores.mean(axis=1).mean(), abs=1e-12)
        assert got["n"] == 3 and got["items"] == 30
    assert summary["arms"]["volta"]["knowledge"]["ci95"] == 0.0  # every item right in every seed: no spread
    assert summary["arms"]["pascal"]["knowledge"]["ci95"] > 0.0
    by = {(c["metric"], c["arm"], c["baseline"]): c for c in summary["comparisons"]}
    assert len(by) == 4
    # random_order and pascal have the same scores item by item: a paired difference is exactly 0 in every draw.
    same = [r for r in runs if r["arm"] == "pascal"]
    assert all(r["knowledge"] == s["knowledge"] for r, s in zip([r for r in runs if r["arm"] == "random_order"], same))
    vs_pascal = by[("knowledge", "volta", "pascal")]
    expected = 1.0 - np.mean([r["knowledge"] for r in same])
    assert (
        vs_pascal["mean"] == pytest.approx(expected, abs=1e-12) and vs_pascal["low"] <= expected <= vs_pascal["high"]
    )
    paired = by[("reasoning", "hopper", "hopper_token_matched")]  # identical per-item scores
    assert (paired["mean"], paired["low"], paired["high"], paired["ci95"]) == (0.0, 0.0, 0.0, 0.0)
    seeds = summary["hopper_seeds"]
    assert [h["seed"] for h in seeds] == [1, 2, 3]
    for h in seeds:
        assert h["rlp_reward_last_quarter"] - h["rlp_reward_first_quarter"] == pytest.approx(0.3, abs=1e-9)
        assert h["truncation_rate"] == 0.25


def test_summarise_only_regenerates_table_and_plot(four_learners, tmp_path):
    runs = _runs(items=10)
    summary = four_learners.summarise(runs, "python examples/studies/four_learners.py --quick", 60.0, {"iters": 1})
    four_learners.write_outputs(summary, runs, tmp_path)
    (tmp_path / "table.md").unlink()
    (tmp_path / "plot.png").unlink()
    result = subprocess.run(
        [sys.executable, four_learners.__file__, "--summarise-only", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| volta - pascal | knowledge |" in table and "| 1 | " in table  # the comparison and hopper seed 1 rows
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_a_cut_study_is_summarised_from_its_finished_runs_and_marked_incomplete(four_learners, tmp_path):
    everything = _runs(items=10)
    runs = [r for r in everything if r["seed"] == 1] + [everything[6]]  # seed 1 finished; seed 2 only one arm
    out = tmp_path / "runs"
    out.mkdir()
    settings = {"seeds": [1, 2, 3], "iters": 1}
    (out / "study_started.json").write_text(json.dumps({"time": 0.0, "command": "c", "settings": settings}))
    (out / "runs.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(runs)))
    result = subprocess.run(
        [
            sys.executable,
            four_learners.__file__,
            "--summarise-partial",
            "--out",
            str(out),
            "--results",
            str(tmp_path / "res"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert everything[6]["seed"] == 2
    counts = (summary["complete"], summary["runs_finished"], summary["runs_summarised"], summary["runs_planned"])
    assert counts == (False, 7, 7, 18)
    assert summary["arms"]["pascal"]["knowledge"]["n"] == 2  # pascal finished seeds 1 and 2
    vs_pascal = next(c for c in summary["comparisons"] if c["baseline"] == "pascal")
    assert vs_pascal["n"] == 1  # volta finished only seed 1: the pair has one seed
    assert summary["arms"]["volta"]["knowledge"]["n"] == 1
    assert "**Incomplete**: 7 of 18 runs finished (study cut)" in (tmp_path / "res" / "table.md").read_text()


def test_rerunning_one_arm_reuses_the_other_arms_of_the_earlier_study_and_says_so(four_learners, tmp_path):
    earlier = _runs(items=10)
    rerun = [dict(r, knowledge=[0.0] * 10, seconds=5.0) for r in earlier if r["arm"] == "hopper"]
    for r in earlier:
        r["seconds"] = 100.0
    merged, reused = four_learners.with_reused(rerun, earlier, ["hopper"], [1, 2, 3])
    assert len(merged) == 18 and len(reused) == 15
    assert [(r["seed"], r["arm"]) for r in merged] == [(r["seed"], r["arm"]) for r in earlier]  # table order
    assert all(r["knowledge"] == [0.0] * 10 for r in merged if r["arm"] == "hopper")  # the new hopper runs
    assert not any(r["arm"] == "hopper" for r in reused)
    only_seed_1, _ = four_learners.with_reused(rerun[:1], earlier, ["hopper"], [1])
    assert {r["seed"] for r in only_seed_1} == {1} and len(only_seed_1) == 6
    summary = four_learners.summarise(merged, "c --arms hopper --reuse r.json", 1.0, {"iters": 1})
    summary["reused"] = {"from": "r.json", "arms": ["pascal"], "run_seconds": 1500.0}
    four_learners.write_outputs(summary, merged, tmp_path)
    assert (
        "Reused from `r.json` (an earlier invocation; not rerun): pascal, 1500 s of runs."
        in (tmp_path / "table.md").read_text()
    )


@pytest.mark.parametrize("content", [None, "{not json", '[{"arm": "pascal"}]'])
def test_a_bad_reuse_file_stops_the_study_before_any_training_and_names_the_file(four_learners, tmp_path, content):
    path = tmp_path / "runs.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, four_learners.__file__, "--arms", "hopper", "--reuse", str(path), "--out", str(out),
         "--world-dir", str(tmp_path / "world"), "--results", str(tmp_path / "res")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"--reuse {path}: " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "world").exists() and not (tmp_path / "res").exists()  # no world built, nothing written


def _job(rlp_steps=0, ntp=10, matched=0, **ours):
    smartpt = {"experiment": "ampere", "data": {"arm": "planned"}, "rlp": {"lr": 1e-6}, "schedule": {}, **ours}
    schedule = {"ntp_steps": ntp, "rlp_steps": rlp_steps, "matched_ntp_steps": matched}
    return {"model": {"num_layers": 2}, "train": {"train_iters": ntp + rlp_steps + matched}, "smartpt": smartpt,
            "schedule": schedule}  # fmt: skip


def test_same_training_allows_only_the_objective_settings_to_differ(four_learners):
    ampere = _job()
    token_matched = _job(ntp=7, matched=3, experiment="hopper", rlp={"lr": 3e-4}, schedule={"rlp_steps": 3})
    assert four_learners.same_training(token_matched, ampere) is None
    assert "RLP steps" in four_learners.same_training(_job(ntp=7, rlp_steps=3), ampere)
    assert "next-token steps differ: 12 vs 10" in four_learners.same_training(_job(ntp=7, matched=5), ampere)
    other_data = _job(data={"arm": "random_order"})
    assert four_learners.same_training(other_data, ampere) == "settings differ: smartpt.data"
    deeper = {**ampere, "model": {"num_layers": 4}}
    assert four_learners.same_training(deeper, ampere) == "settings differ: model"


def test_a_same_run_arm_takes_the_scores_and_none_of_the_seconds(four_learners):
    row = {"arm": "ampere", "seed": 2, "seconds": 140.0, "knowledge": [1.0], "reasoning": [0.0]}
    reused = four_learners.reused_as(row, "hopper_token_matched")
    assert reused == {**row, "arm": "hopper_token_matched", "seconds": 0.0, "same_run_as": "ampere-seed2"}
