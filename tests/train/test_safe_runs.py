"""Runs that are safe to start, stop and resume, through ``smartpt train`` as a user types it.

Each run is a real subprocess (the bundled corpus, planned, trained through Megatron-Bridge's ``pretrain()``); the
one-line errors run ``smartpt``'s ``main()`` in this process (the same code, one Bridge import for all of them).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nemo_smartpt.testing.cli_runs import ROOT, last_per_step, read_metrics, smartpt_train, user_env

TINY = ["model.seq_length=64", "train.global_batch_size=8", "train.micro_batch_size=4", "eval.enabled=false"]


def files_of(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


@pytest.mark.slow
def test_hopper_at_its_defaults_trains_to_the_end_then_says_complete_and_guards_its_directory(
    tmp_path, bundled, monkeypatch, capsys
):
    """``smartpt train +experiment=hopper`` at its defaults (seq 64; the preset's rlp.max_context=96 does not fit):
    rlp.max_context is fitted and said so, the run goes to the last RLP step in ``runs/hopper``, checkpoints at the
    default interval (half the run) and keeps them; the same command then says the run is complete; volta pointed at
    the same directory fails in one line and leaves every file as it was."""
    bundled_arg = f"data.bundled_dir={bundled}"  # the corpus is built once per test session, not per run
    first = smartpt_train("+experiment=hopper", bundled_arg, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[smartpt] rlp.max_context 96 -> 33: an RLP scoring row" in first.stdout
    run = tmp_path / "runs" / "hopper"
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all("rlp_reward_mean" in r for r in records[6:]) and not any("rlp_reward_mean" in r for r in records[:6])
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == ["iter_0000005", "iter_0000010"]

    # The two commands that stop before training run smartpt's main() in this process (one Megatron import).
    from nemo_smartpt.cli import main

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "+experiment=hopper", bundled_arg]) == 0
    again = capsys.readouterr()
    assert "run complete at step 10 (runs/hopper)" in again.out, again.err[-3000:]

    before = files_of(run)
    assert main(["train", "+experiment=volta", "out_dir=runs/hopper", bundled_arg]) == 2
    wrong = capsys.readouterr()
    # Megatron's import warnings go to stderr before it; the command's own error is one line, and the last.
    err = wrong.err.strip().splitlines()
    message = [line for line in err if line.startswith("smartpt train:")]
    assert len(message) == 1 and err[-1] == message[0], wrong.err[-3000:]
    assert "runs/hopper holds a run started with other settings" in message[0]
    assert "experiment (" in message[0] and "resume.allow_changes=[" in message[0]
    after = files_of(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not {k for k in changed if not k.startswith(("tb", "index_cache"))}, changed


@pytest.mark.slow
def test_sigterm_saves_and_the_same_command_resumes_the_same_stream(tmp_path, bundled):
    """SIGTERM mid-run (Slurm preemption, ``timeout``, ``docker stop``) saves a checkpoint and exits 0; a save cut
    short (a 0-byte run_config.yaml, as a kill between Bridge's tracker and config writes leaves it) is set aside and
    the run resumes from the previous complete checkpoint; the resumed steps equal the uninterrupted run's."""
    common = [
        f"data.bundled_dir={bundled}",
        "+experiment=ampere",
        "train.train_iters=16",
        "checkpoint.save_interval=2",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = smartpt_train(f"out_dir={full}", *common, *TINY)
    assert reference.returncode == 0, reference.stderr[-3000:]

    env = user_env()
    command = [sys.executable, "-m", "nemo_smartpt", "train", f"out_dir={cut}", *common, *TINY]
    log = (tmp_path / "cut.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 3600
    metrics = cut / "metrics.jsonl"
    # Training is under way (Bridge's signal handler is installed before step 1) once step 3 is logged.
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=3600) == 0
    log.close()
    output = (tmp_path / "cut.log").read_text()
    assert "the same command resumes" in output, output[-3000:]
    saved = sorted(int(p.name[5:]) for p in (cut / "checkpoints").glob("iter_*"))
    # Step 2's interval save, and the save on SIGTERM at step 3 or later (4 coincides with the interval); most_recent_k=2
    # keeps two.
    assert len(saved) == 2 and 2 <= saved[0] < saved[1] < 16, saved

    # A save cut short: the newest checkpoint's run_config.yaml is empty.
    (cut / "checkpoints" / f"iter_{saved[-1]:07d}" / "run_config.yaml").write_text("")
    resumed = smartpt_train(f"out_dir={cut}", *common, *TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint iter_{saved[-1]:07d} is incomplete" in resumed.stdout
    assert f"resuming from the last complete one, iter_{saved[-2]:07d}" in resumed.stdout
    assert (cut / "checkpoints" / f"incomplete_iter_{saved[-1]:07d}").is_dir()
    by_step_full = {r["step"]: r["lm_loss"] for r in read_metrics(full)}
    by_step_cut = last_per_step(read_metrics(cut))
    assert sorted(by_step_cut) == list(range(1, 17))
    for step in range(saved[-2] + 1, 17):
        assert by_step_cut[step]["lm_loss"] == by_step_full[step], step


@pytest.mark.slow
def test_cfg_job_prints_clean_yaml_that_config_file_runs_again(tmp_path, bundled, capsys):
    first = smartpt_train("+experiment=hopper", f"data.bundled_dir={bundled}", "train.train_iters=12", "--cfg", "job")
    assert first.returncode == 0, first.stderr[-3000:]
    job = yaml.safe_load(first.stdout)  # stdout is the YAML and nothing else
    assert job["_target_"] == "megatron.bridge.training.config.ConfigContainer"
    assert job["train"]["train_iters"] == 12 and job["smartpt"]["experiment"] == "hopper"
    assert job["smartpt"]["schedule"]["rlp_steps"] == 4
    path = tmp_path / "job.yaml"
    path.write_text(first.stdout)
    # Fed back (in this process: the same main(), one Bridge import for both).
    from nemo_smartpt.cli import main

    capsys.readouterr()
    assert main(["train", "--config-file", str(path), "--cfg", "job"]) == 0
    assert capsys.readouterr().out == first.stdout
    assert (
        main(["train", "--config-file", str(path), "train.train_iters=7", "rlp.num_rollouts=2", "--cfg", "job"]) == 0
    )
    job7 = yaml.safe_load(capsys.readouterr().out)
    assert job7["train"]["train_iters"] == 7 and job7["smartpt"]["rlp"]["num_rollouts"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train.train_iters=abc"], "train.train_iters='abc': expected int"),
        (["model.tensor_model_parallel_size=2"], "launch with torchrun --nproc-per-node=2"),
        (["checkpoint.pretrained_checkpoint=/no/such/ckpt"], "checkpoint.pretrained_checkpoint: no such directory"),
        (["data.tokenizer=/no/such/tokenizer"], "data.tokenizer:"),
        (["+experiment=hopper", "rlp.max_context=96"], "lower rlp.max_context to 33 or less"),
        (["data.catalog=/no/such/catalog.yaml"], "data.catalog: no such file /no/such/catalog.yaml"),
    ],
    ids=["override-type", "world-size", "pretrained", "tokenizer", "rlp-row", "catalog"],
)
def test_bad_input_fails_before_step_one_in_one_line_and_writes_nothing(args, expected, tmp_path, monkeypatch, capsys):
    from nemo_smartpt.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", *args]) == 2
    # The first call in this process also imports Megatron (its import warnings go to stderr): the error is the one
    # line the command itself printed, and it is the last thing on stderr.
    err = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in err if line.startswith("smartpt train:")]
    assert len(ours) == 1 and expected in ours[0] and err[-1] == ours[0], err[-3:]
    assert not list(tmp_path.iterdir())  # no run directory, no plan, nothing


@pytest.mark.slow
def test_the_recipe_example_trains_with_add_smartpt(tmp_path, bundled):
    env = user_env()
    command = [
        sys.executable,
        str(ROOT / "examples" / "recipes" / "add_smartpt.py"),
        "--out-dir",
        str(tmp_path / "run"),
        "--bundled-dir",
        bundled,
    ]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    assert first.returncode == 0, first.stderr[-3000:]
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all("rlp_reward_mean" in r for r in records[6:])
