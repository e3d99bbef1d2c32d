"""``SMARTPT_MAX_STEPS``: the documented cap the README test runs every command under."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nemo_smartpt.bridge.step_cap import StepCapError, apply_step_cap, capped_steps


@pytest.mark.parametrize(
    ("total", "rlp", "cap", "expected"),
    [
        (10, 0, 3, (3, 0)),  # next-token only
        (10, 4, 2, (2, 1)),  # hopper's defaults: one RLP step and one next-token step remain
        (200, 20, 5, (5, 1)),  # RLP keeps its share, rounded up
        (200, 200, 3, (3, 3)),  # every step RLP stays every step RLP
        (10, 9, 4, (4, 3)),  # at least one next-token step when the command has both
        (2, 1, 5, (2, 1)),  # under the cap: unchanged
        (10, 4, 1, (1, 1)),  # one step: the objective the run switches to
    ],
)
def test_capped_steps(total, rlp, cap, expected):
    assert capped_steps(total, rlp, cap) == expected


def _configs(total: int, rlp: int):
    return SimpleNamespace(schedule=SimpleNamespace(rlp_steps=rlp)), SimpleNamespace(
        train=SimpleNamespace(train_iters=total)
    )


def test_apply_step_cap_reads_the_environment_and_says_what_changed(monkeypatch, capsys):
    cfg, bridge = _configs(200, 20)
    monkeypatch.delenv("SMARTPT_MAX_STEPS", raising=False)
    apply_step_cap(cfg, bridge)
    assert (bridge.train.train_iters, cfg.schedule.rlp_steps) == (200, 20)
    monkeypatch.setenv("SMARTPT_MAX_STEPS", "4")
    apply_step_cap(cfg, bridge)
    assert (bridge.train.train_iters, cfg.schedule.rlp_steps) == (4, 1)
    assert "train.train_iters 200 -> 4, schedule.rlp_steps 20 -> 1" in capsys.readouterr().out


@pytest.mark.parametrize("raw", ["0", "-1", "abc"])
def test_a_bad_cap_is_one_line(monkeypatch, raw):
    monkeypatch.setenv("SMARTPT_MAX_STEPS", raw)
    with pytest.raises(StepCapError, match="SMARTPT_MAX_STEPS"):
        apply_step_cap(*_configs(10, 0))
