"""The RLP phase's own optimiser settings through Bridge's ``pretrain()``: next-token steps 0-1, RLP from step 2.

The run uses ``cpu_pretrain_config``'s next-token optimiser (lr 3e-3, clip 1.0, no weight decay) and RLP's own
(lr 2e-4 decaying linearly over the two RLP steps, clip 0.5, weight decay 0.01, fresh Adam at the switch). A probe
callback after the RLP callback records, at every step, the learning rate, weight decay and clip in force for
``optimizer.step()`` and Adam's step count after it; ``metrics.jsonl`` must show the same learning rate. A second run
resumes from the iteration-3 checkpoint (one RLP step done) and must continue with the RLP values, not the
next-token ones, and with the Adam state it saved.
"""

from __future__ import annotations

import json

import pytest

from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.rlp_runs import tiny_rlp_run, write_tiny_rlp_corpus

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

NTP_LR, RLP_LR, SWITCH, ITERS = 3e-3, 2e-4, 2, 4
RLP = dict(lr=RLP_LR, lr_schedule="linear", clip_grad=0.5, weight_decay=0.01, reset_optimizer_state=True)


def _expected_rlp_lr(k: int) -> float:
    return RLP_LR * (1 - k / (ITERS - SWITCH))  # linear to min_lr = 0 over the RLP steps


def _probe_class():
    from megatron.bridge.training.callbacks import Callback

    class Probe(Callback):
        def __init__(self):
            self.steps = {}

        def on_train_step_start(self, context):
            opt = context.optimizer
            self.steps[int(context.state.train_state.step)] = {
                "lr": [float(g["lr"]) for g in opt.param_groups],
                "wd": sorted({float(g["weight_decay"]) for g in opt.param_groups}),
                "clip": float(opt.config.clip_grad),
            }

        def on_train_step_end(self, context):
            opt = context.optimizer.optimizer  # the torch Adam inside Megatron's wrapper
            counts = {int(float(s["step"])) for s in opt.state.values() if "step" in s}
            self.steps[int(context.state.train_state.step)]["adam_steps"] = sorted(counts)

    return Probe


def _train(rank, world_size, data_dir, out_dir, load_dir=None):
    from megatron.bridge.training.gpt_step import forward_step as ntp_forward_step
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.bridge.objective import SwitchingForwardStep

    cfg, rlp_step, callbacks = tiny_rlp_run(
        data_dir,
        out_dir,
        rlp=RLP,
        start_step=SWITCH,
        train_iters=ITERS,
        global_batch_size=2,
        micro_batch_size=2,
        lr=NTP_LR,
        save_interval=3,
    )
    if load_dir is not None:
        cfg.checkpoint.load, cfg.checkpoint.ckpt_step = load_dir, 3
    probe = _probe_class()()
    forward = SwitchingForwardStep(ntp_forward_step, rlp_step, switch_at=SWITCH)
    pretrain(cfg, forward, callbacks=[*callbacks, probe])
    return probe.steps


def test_rlp_steps_run_with_their_own_optimiser_settings_and_resume_with_them(tmp_path):
    write_tiny_rlp_corpus(tmp_path / "data")
    out = tmp_path / "run"
    (steps,) = run_distributed(_train, 1, str(tmp_path / "data"), str(out), timeout=900)
    assert sorted(steps) == list(range(ITERS))
    for s in (0, 1):  # next-token steps: the run's own optimiser (one warm-up step, then constant)
        assert all(lr == pytest.approx(NTP_LR * (1 if s else 0)) for lr in steps[s]["lr"]), steps[s]
        assert steps[s]["clip"] == 1.0 and steps[s]["wd"] == [0.0]
    assert steps[1]["adam_steps"] == [2]
    for s in (2, 3):  # RLP steps
        k = s - SWITCH
        assert all(lr == pytest.approx(_expected_rlp_lr(k)) for lr in steps[s]["lr"]), steps[s]
        assert steps[s]["clip"] == 0.5 and steps[s]["wd"][-1] == pytest.approx(0.01)
        assert steps[s]["adam_steps"] == [k + 1]  # Adam restarted at the switch
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [3, 4]  # RLP metrics only for RLP steps (iteration = step + 1)
    assert [m["rlp lr"] for m in lines] == pytest.approx([_expected_rlp_lr(0), _expected_rlp_lr(1)])

    # Resume at iteration 3 (one RLP step done): RLP's values, not the next-token schedule, and Adam continues.
    resumed_dir = tmp_path / "resumed"
    (resumed,) = run_distributed(
        _train, 1, str(tmp_path / "data"), str(resumed_dir), str(out / "checkpoints"), timeout=900
    )
    assert sorted(resumed) == [3]
    assert all(lr == pytest.approx(_expected_rlp_lr(1)) for lr in resumed[3]["lr"])
    assert resumed[3]["clip"] == 0.5 and resumed[3]["adam_steps"] == [2]
    line = json.loads((resumed_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 4 and line["rlp lr"] == pytest.approx(_expected_rlp_lr(1))
