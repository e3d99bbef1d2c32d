"""The rules behind safe run directories, on real files: the resume guard, checkpoint scanning, atomic writes, the
save-interval policy and the RLP row fit (the CLI tests in test_safe_runs.py run them end to end)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from nemo_smartpt.bridge import preflight, run_dir
from nemo_smartpt.overrides import OverrideError
from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.prompt import ThoughtLayout


def test_resume_guard_names_each_changed_key_and_honours_allow_changes(tmp_path):
    saved = run_dir.flatten({"experiment": "volta", "train": {"train_iters": 10, "lr": 0.1}, "rlp": {"a": 1}})
    run_dir.write_snapshot(tmp_path, saved)
    assert run_dir.check_resume(tmp_path, saved, []).resuming
    new = run_dir.flatten({"experiment": "hopper", "train": {"train_iters": 20, "lr": 0.1}, "rlp": {"a": 2}})
    with pytest.raises(run_dir.RunDirError) as error:
        run_dir.check_resume(tmp_path, new, ["rlp"])
    text = str(error.value)
    assert "\n" not in text
    assert 'experiment ("volta" -> "hopper")' in text and "train.train_iters (10 -> 20)" in text
    assert "resume.allow_changes=[experiment,train.train_iters]" in text and "rlp.a" not in text
    check = run_dir.check_resume(tmp_path, new, ["experiment", "train.*", "rlp"])
    assert check.changed == ["experiment", "rlp.a", "train.train_iters"]
    assert not run_dir.check_resume(tmp_path / "fresh", new, []).resuming


def _checkpoint(load_dir, step, run_config="model: {}\n", distributed=True):
    directory = load_dir / f"iter_{step:07d}"
    directory.mkdir(parents=True)
    (directory / "run_config.yaml").write_text(run_config)
    (directory / "train_state.pt").write_bytes(b"x")
    if distributed:
        (directory / "metadata.json").write_text("{}")
        (directory / ".metadata").write_bytes(b"x")
    return directory


def test_scan_finds_the_newest_complete_checkpoint_behind_an_interrupted_save(tmp_path):
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, run_config="")  # killed between Bridge's tracker write and its run_config.yaml write
    torch.save({"step": torch.tensor(6)}, tmp_path / "latest_train_state.pt")
    scan = run_dir.scan_checkpoints(tmp_path)
    assert (scan.latest, scan.complete) == (6, 4)
    assert scan.problems == {6: "run_config.yaml is empty or cut short"}
    assert run_dir.set_aside_incomplete(tmp_path, scan) == ["incomplete_iter_0000006"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["incomplete_iter_0000006", "iter_0000004"]


def test_scan_without_a_readable_tracker_and_with_a_half_saved_distributed_checkpoint(tmp_path):
    _checkpoint(tmp_path, 2)
    half = _checkpoint(tmp_path, 3)
    (half / ".metadata").unlink()
    (tmp_path / "latest_train_state.pt").write_bytes(b"")  # the tracker itself cut short
    scan = run_dir.scan_checkpoints(tmp_path)
    assert (scan.latest, scan.complete) == (2, 2) and 3 in scan.problems
    assert run_dir.scan_checkpoints(tmp_path / "none").latest is None


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run" / "smartpt_config.json"
    run_dir.atomic_write_text(target, "one")
    run_dir.atomic_write_text(target, "two")
    assert target.read_text() == "two" and os.listdir(target.parent) == ["smartpt_config.json"]


def test_save_interval_policy():
    assert preflight.choose_save_interval(2000, 100_000) == 2000  # the recipe's own value fits the run
    assert preflight.choose_save_interval(300_000, 100_000) == 500  # vanilla_gpt's: never within the run
    assert preflight.choose_save_interval(None, 10) == 5  # the tiny CPU run: halfway and at the end
    assert preflight.choose_save_interval(10, 10) == 5  # "only at the last step" is not a checkpoint policy
    assert preflight.choose_save_interval(None, 1) == 1


def _bridge(seq, world=1, tp=1, position="learned_absolute"):
    model = SimpleNamespace(
        seq_length=seq,
        position_embedding_type=position,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        context_parallel_size=1,
    )
    return SimpleNamespace(model=model)


def test_rlp_rows_are_fitted_to_the_position_table_or_named():
    layout = ThoughtLayout(prompt_ids=(1, 2), think_open_ids=(3,), think_close_ids=(4, 5))
    rlp = RLPConfig(max_context=96, min_context=8, max_thought_tokens=16)
    note = preflight.fit_rlp_context(rlp, layout, _bridge(64), may_change=True)
    assert rlp.max_context == 64 - 2 - 1 - 2 - 16 and "rlp.max_context 96 -> 43" in note
    assert preflight.rlp_row_tokens(rlp, layout) == 64
    with pytest.raises(OverrideError, match=r"= 117 tokens but model.seq_length=64; lower rlp.max_context to 43"):
        preflight.fit_rlp_context(RLPConfig(max_context=96, max_thought_tokens=16), layout, _bridge(64), False)
    with pytest.raises(OverrideError, match="raise model.seq_length"):
        preflight.fit_rlp_context(RLPConfig(max_context=96, max_thought_tokens=60), layout, _bridge(64), True)
    assert preflight.fit_rlp_context(RLPConfig(max_context=96), layout, _bridge(64, position="rope"), True) is None


def test_world_size_must_hold_whole_model_parallel_groups():
    preflight.check_world_size(_bridge(64, tp=2), world_size=4)
    with pytest.raises(OverrideError, match=r"needs 2 processes .* this launch has 1: launch with torchrun"):
        preflight.check_world_size(_bridge(64, tp=2), world_size=1)


def test_eval_tasks_are_task_names_and_a_missing_include_path_is_named(tmp_path):

    from nemo_smartpt.bridge.train_config import TrainConfig

    cfg = TrainConfig()
    cfg.data.catalog = "bundled"
    cfg.eval.tasks = ["world_knowledge", "hellaswag"]  # lm-eval names, not files: no error here
    bridge = SimpleNamespace(checkpoint=SimpleNamespace(pretrained_checkpoint=None), tokenizer=None)
    preflight.check_paths(cfg, bridge)
    cfg.eval.include_path = str(tmp_path / "no_such_tasks")
    with pytest.raises(OverrideError, match=r"eval.include_path: no such directory .*no_such_tasks"):
        preflight.check_paths(cfg, bridge)
    cfg.eval.enabled = False  # not evaluating: nothing to check
    preflight.check_paths(cfg, bridge)
