"""``smartpt train`` end to end on CPU: presets, the phase switch in the log, per-phase loss, resume, baselines.

Each run is a real subprocess (``python -m nemo_smartpt train ...``): the bundled corpus is prepared into Megatron
indexed datasets, planned, served by the phased dataset, and trained through Megatron-Bridge's ``pretrain()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TINY = ["model.seq_length=64", "train.global_batch_size=8", "train.micro_batch_size=4", "eval.enabled=false"]


def smartpt(*args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "nemo_smartpt", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def smartpt_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """``smartpt train ARGS`` through ``main()`` in this process, for commands that print and exit without training
    (``--cfg job``, refused overrides): the same code as the subprocess, without a fresh ~20 s Megatron import each.
    Exits as ``python -m nemo_smartpt`` does (``sys.exit(main())``); the output is what the command printed."""
    from nemo_smartpt.cli import main

    capsys.readouterr()
    try:
        code = main(["train", *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["smartpt", "train", *args], code, out, err)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_volta_switches_phase_at_the_planned_sample_and_logs_loss_per_phase(tmp_path, bundled):
    run = tmp_path / "volta"
    result = smartpt(
        "+experiment=volta", f"out_dir={run}", f"data.bundled_dir={bundled}", "train.train_iters=20", *TINY
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((run / "plan" / "plan.json").read_text())
    assert [p["name"] for p in plan["phases"]] == ["phase1", "phase2"]
    assert "reasoning" not in {s["name"] for s in plan["sources"]}  # volta has no reasoning data
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 21))
    # The phase each step logs (from the plan's boundary) is the phase its samples came from (from the dataset).
    for record in records:
        served = {k.split("/")[-1] for k in record if k.startswith("loss/phase/")}
        assert served == {record["phase"]}, record
    switch = next(r["step"] for r in records if r["phase"] == "phase2")
    boundary_tokens = plan["phases"][0]["end_token"]
    expected_first_sample = round(round(boundary_tokens / 64) / 8) * 8
    assert (switch - 1) * 8 == expected_first_sample
    assert f"phase switch -> phase2 at step {switch}" in result.stdout
    assert any(k.startswith("loss/source/") for k in records[-1])
    assert records[-1]["lm_loss"] < records[0]["lm_loss"]


def test_presets_and_bridge_overrides_resolve(bundled, capsys):
    result = smartpt_here(
        capsys, "+experiment=pascal", "train.train_iters=7", f"data.bundled_dir={bundled}", "--cfg", "job"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "experiment: pascal" in result.stdout and "arm: natural" in result.stdout
    assert "reasoning: false" in result.stdout
    assert "train_iters: 7" in result.stdout


def test_flop_matched_baseline_trains_more_next_token_steps_than_rlp_steps(bundled, capsys, tmp_path, four_learners):
    args = ["+experiment=hopper", "schedule.rlp_steps=3", "train.train_iters=10", f"data.bundled_dir={bundled}"]
    args.append(f"out_dir={tmp_path / 'run'}")  # one directory for every command: its paths are in the jobs
    token = smartpt_here(capsys, *args, "schedule.rlp_baseline=token_matched", "--cfg", "job")
    flop = smartpt_here(capsys, *args, "schedule.rlp_baseline=flop_matched", "--cfg", "job")
    assert token.returncode == 0 and flop.returncode == 0, flop.stderr[-2000:]
    schedule = lambda out: json.loads(out.split("# schedule: ")[1].splitlines()[0])  # noqa: E731
    token_s, flop_s = schedule(token.stdout), schedule(flop.stdout)
    assert token_s == {**token_s, "ntp_steps": 7, "rlp_steps": 0, "matched_ntp_steps": 3, "total_steps": 10}
    assert flop_s["rlp_steps"] == 0 and flop_s["matched_ntp_steps"] > 3
    # The four-learner study reuses Ampere's runs as this baseline's only where the resolved jobs agree: they do.
    ampere = smartpt_here(capsys, "+experiment=ampere", *args[2:], "--cfg", "job")
    assert ampere.returncode == 0, ampere.stderr[-2000:]
    job = four_learners.job_of
    assert four_learners.same_training(job(token.stdout), job(ampere.stdout)) is None
    assert four_learners.same_training(job(flop.stdout), job(ampere.stdout)).startswith("next-token steps differ")


def test_make_smoke_resolves(capsys):
    """``make smoke``'s settings are real keys (the target once passed ``smoke=true``, a key that never existed)."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    args = next(line for line in makefile.splitlines() if line.startswith("SMOKE_ARGS :=")).split(":=", 1)[1].split()
    assert "$(SMOKE_ARGS)" in makefile.split("\nsmoke:", 1)[1].split("\n\n", 1)[0]
    job = smartpt_here(capsys, *args, "--cfg", "job")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "experiment: volta" in job.stdout and "train_iters: 10" in job.stdout


def test_unknown_keys_fail_with_the_parsers_message(capsys):
    ours = smartpt_here(capsys, "data.no_such=1")
    assert ours.returncode == 2 and "unknown key 'data.no_such'" in ours.stderr
    theirs = smartpt_here(capsys, "train.no_such_field=1", "--cfg", "job")
    assert theirs.returncode == 2 and "no_such_field" in theirs.stderr


def test_demo_runs_the_whole_story_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    world = [f"world_dir={tmp_path / 'world'}", "world=tiny"]  # the demo's world at test size
    result = subprocess.run(
        [sys.executable, "-m", "nemo_smartpt", "demo", f"out_dir={out}", *world, "train_iters=24", "rlp_steps=4"],
        capture_output=True,
        text=True,
        timeout=3600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    for section in ("## Data", "## Blend plan", "## Training", "## RLP", "## Held-out evaluation"):
        assert section in report
    assert "synthetic and generated by nemo_smartpt" in report
    assert "| world_knowledge | acc |" in report and "| world_reasoning | exact_match,answer |" in report
    evaluation = json.loads((out / "eval.json").read_text())  # lm-eval's results, with standard errors
    assert evaluation["results"]["world_knowledge"]["acc_stderr,none"] > 0
    for png in ("plan/plan.png", "loss_by_source.png", "loss_by_phase.png", "rlp_reward.png", "rlp_thought.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    records = metrics(out)
    rlp = [r for r in records if "rlp_reward_mean" in r]
    assert [r["step"] for r in rlp] == [21, 22, 23, 24]  # the last rlp_steps=4 of 24
    for r in rlp:
        for key in (
            "rlp_reward_std",
            "rlp_s_ema_mean",
            "rlp_thought_length",
            "rlp_truncation_rate",
            "rlp_clip_fraction",
            "rlp_flops_generation",
            "rlp_flops_training",
            "rlp_flops_baseline",
            "rlp_generation_tokens_per_s",
            "rlp_training_tokens_per_s",
            "rlp_positive_gain_fraction",
        ):
            assert key in r and r[key] == r[key], key  # present and not NaN
    assert {r["phase"] for r in records} == {"phase1", "phase2"}
    assert evaluation["n-samples"]["world_reasoning"]["effective"] > 0


def test_rlp_starts_from_a_pretrained_megatron_checkpoint(tmp_path, bundled):
    base = tmp_path / "base"
    first = smartpt(
        "+experiment=volta", f"out_dir={base}", f"data.bundled_dir={bundled}", "train.train_iters=4", *TINY
    )
    assert first.returncode == 0, first.stderr[-3000:]
    rlp = tmp_path / "rlp"
    second = smartpt(
        "+experiment=hopper",
        f"out_dir={rlp}",
        f"data.bundled_dir={bundled}",
        "train.train_iters=2",
        "schedule.rlp_steps=2",
        f"checkpoint.pretrained_checkpoint={base / 'checkpoints'}",
        "rlp.max_context=32",
        *TINY,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"loading distributed checkpoint from {base / 'checkpoints'} at iteration 4" in second.stdout
    records = metrics(rlp)
    assert [r["step"] for r in records] == [1, 2] and all("rlp_reward_mean" in r for r in records)


def test_train_with_a_local_hugging_face_tokenizer(tmp_path):
    """Data prepared with a local HF tokenizer trains with Bridge's own HuggingFaceTokenizer loading it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nemo_smartpt.bundled.corpus import write_corpus
    from nemo_smartpt.reasoning.config import PrepareConfig
    from nemo_smartpt.reasoning.prepare import prepare

    raw = write_corpus(tmp_path / "raw")
    texts = [json.loads(line)["text"] for line in raw["crawl_high"].read_text().splitlines()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    special = ["<unk>", "<|endoftext|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=alphabet)
    )
    hf_dir = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(hf_dir)
    for name in ("crawl_high", "math"):
        prepare(
            PrepareConfig(
                input=str(raw[name]),
                output_prefix=str(tmp_path / name),
                tokenizer=str(hf_dir),
                format="text",
                progress=False,
            )
        )
    catalog = {
        "sources": [
            {"name": "crawl_high", "prefix": "crawl_high", "quality": "high", "category": "crawl", "max_epochs": 4},
            {"name": "math", "prefix": "math", "quality": "high", "category": "math", "max_epochs": 4},
        ]
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    run = tmp_path / "run"
    result = smartpt(
        f"data.catalog={tmp_path / 'catalog.yaml'}",
        f"data.tokenizer={hf_dir}",
        f"out_dir={run}",
        "train.train_iters=4",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics(run)
    assert len(records) == 4 and all(r["lm_loss"] == r["lm_loss"] for r in records)


@pytest.mark.distributed
def test_hopper_under_torchrun_with_two_pipeline_stages(tmp_path, bundled):
    """The launcher path of the Slurm script (torchrun) with PP=2: next-token steps, then RLP across both stages."""
    run = tmp_path / "pp2"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node=2",
            "-m",
            "nemo_smartpt",
            "train",
            "+experiment=hopper",
            "model.pipeline_model_parallel_size=2",
            f"out_dir={run}",
            f"data.bundled_dir={bundled}",
            "train.train_iters=6",
            "schedule.rlp_steps=2",
            "model.seq_length=128",
            "train.global_batch_size=8",
            "train.micro_batch_size=4",
            "eval.enabled=false",
            # Validation (next-token loss on held-out documents) in both parts, through the PP=2 schedule.
            "validation.eval_interval=3",
            "validation.eval_iters=1",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all("lm_loss" in r for r in records[:4])
    # Validation after step 3 (next-token part) and step 6 (RLP part) ran the next-token step through both stages.
    validation = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [v["step"] for v in validation][:2] == [3, 6]
    assert all(0 < v["lm_loss"] < 20 and v["ppl"] > 1 for v in validation)
    rlp = records[4:]
    assert all(r["rlp_prefills"] == r["rlp_positions"] > 0 for r in rlp)
    assert all(r["rlp_reward_mean"] == r["rlp_reward_mean"] for r in rlp)
