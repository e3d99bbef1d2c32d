"""RLP under pipeline parallelism (PP=2, two gloo processes) resumes from a Bridge checkpoint and continues the stream.

An uninterrupted run trains 4 iterations through Bridge's ``pretrain()`` and checkpoints at iterations 2 and 4 (the EMA
goes into ``iter_XXXXXXX/rlp_ema``, a Megatron distributed checkpoint of its own). A second run in a fresh directory loads the
iteration-2 checkpoint (``checkpoint.ckpt_step=2``) and trains iterations 3 and 4. The test proves that:

- each stage restores its *own* shards of the EMA distributed checkpoint (``iter_0000002/rlp_ema``): the shadows at
  train start equal what that checkpoint holds for the stage, tensor for tensor, the update count and RLP totals
  continue from the saved ones (2 → 4, not 0 → 2);
- the resumed iterations are the uninterrupted run's iterations 3 and 4: the same samples (``PipelineFeed`` reads them
  from ``consumed_train_samples``), the same rollouts (sampler seeded per step/rank/micro-batch: identical generated
  token counts on both stages, identical thought lengths), the same loss and rewards, and the same EMA at iteration 4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.rlp_runs import tiny_rlp_run, write_tiny_rlp_corpus

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ITERS = 4
SAVE_AT = 2
# Per-step values that must match exactly (counts, lengths) or to rel 1e-5 (floats; bit-identical on CPU) after the
# resume. The loss is ~1e-10 (zero-mean group advantages at ratio 1), hence no absolute tolerance; it and s_pred check
# the restored weights and data, reward and s_ema the restored EMA (the advantages do not see φ: it cancels per group).
EXACT = ("rlp positions", "rlp prefills", "rlp thought length", "rlp trained thought length", "rlp truncation rate")
CLOSE = (
    "rlp loss",
    "rlp reward mean",
    "rlp reward std",
    "rlp s_pred mean",
    "rlp s_ema mean",
    "rlp advantage std",
    "rlp ratio mean",
    "rlp positive gain fraction",
)


def _probe_class():
    from megatron.bridge.training.callbacks import Callback

    class Probe(Callback):
        """Registered after the RLP callback: sees what it restored at train start, what each step generated, and reads
        the EMA checkpoints back at train end (``pretrain()`` tears the model-parallel state down before it returns)."""

        def __init__(self, run, load_dir: str | None, out_dir: str):
            self.run = run
            self.load_dir = load_dir
            self.out_dir = out_dir
            self.model = None
            self.start = None
            self.steps = []
            self.restored = None
            self.final = None

        def on_train_start(self, context):
            self.model = context.model
            ema = self.run.ema
            self.start = {
                "step": int(context.state.train_state.step),
                "consumed": int(context.state.train_state.consumed_train_samples),
                "ema_updates": ema.num_updates,
                "shadow": None if ema.shadow is None else [s.detach().cpu().clone() for s in ema.shadow],
                "totals": dict(self.run.totals),
            }

        def on_train_step_end(self, context):
            stats = self.run.preparer.stats
            self.steps.append(
                {
                    "step": self.run.last_metrics["step"],
                    "generated_tokens": stats.generated_tokens,
                    "positions": stats.positions,
                    "prefills": self.run.counters.prefills,
                }
            )

        def on_train_end(self, context):
            from nemo_smartpt.rlp.megatron.callbacks import ema_params
            from nemo_smartpt.rlp.megatron.ema_checkpoint import ema_checkpoint_dir, load_ema_checkpoint

            params = ema_params(self.model)
            if self.load_dir is not None:  # the shadows at train start vs this stage's shards of iteration 2's EMA
                saved, common = load_ema_checkpoint(self.model, params, ema_checkpoint_dir(self.load_dir, SAVE_AT))
                shadow = self.start["shadow"]
                self.restored = {
                    "same_shadow": shadow is not None
                    and all(torch.equal(a, b.cpu()) for a, b in zip(shadow, saved, strict=True)),
                    "saved_updates": common["ema_num_updates"],
                    "saved_totals": {k: common[k] for k in ("steps", "generated_tokens", "flops")},
                }
            final, common = load_ema_checkpoint(
                self.model, params, ema_checkpoint_dir(str(Path(self.out_dir) / "checkpoints"), ITERS)
            )
            self.final = ([t.cpu() for t in final], common["ema_num_updates"])

    return Probe


def _train(rank, world_size, data_dir: str, out_dir: str, load_dir: str | None):
    from megatron.bridge.training.pretrain import pretrain

    # Both runs have the same train_iters, so Bridge builds the same dataset (its sample count sets the shuffle).
    # ema_decay 0.5: φ after two updates is far from θ_2, so a re-initialised (not restored) EMA shows in s_ema.
    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir,
        out_dir,
        rlp=dict(ema_decay=0.5),
        train_iters=ITERS,
        global_batch_size=4,
        micro_batch_size=2,
        lr=1e-3,
        pipeline_parallel=2,
        save_interval=SAVE_AT,
    )
    cfg.scheduler.override_opt_param_scheduler = True  # as in the PP=1 resume test (same schedule either way here)
    if load_dir is not None:  # resume from the other run's iteration-2 checkpoint; save into this run's own dir
        cfg.checkpoint.load = load_dir
        cfg.checkpoint.ckpt_step = SAVE_AT
    run = callbacks[0].run
    probe = _probe_class()(run, load_dir, out_dir)
    pretrain(cfg, forward_step, callbacks=[*callbacks, probe])

    start = {k: v for k, v in probe.start.items() if k != "shadow"} | {"had_shadow": probe.start["shadow"] is not None}
    return {
        "is_last": rank == world_size - 1,
        "totals": dict(run.totals),
        "ema_updates": run.ema.num_updates,
        "start": start,
        "steps": probe.steps,
        "restored": probe.restored,
        "final_ema": probe.final[0],
        "final_updates": probe.final[1],
    }


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]  # written by the last stage


def test_rlp_pp2_resumes_from_bridge_checkpoint_and_continues_the_stream(tmp_path):
    write_tiny_rlp_corpus(tmp_path / "data")
    data = str(tmp_path / "data")

    # 1. Uninterrupted: iterations 1..4, checkpoints at 2 and 4.
    full = tmp_path / "full"
    full_ranks = run_distributed(_train, 2, data, str(full), None, timeout=600)
    assert [r["is_last"] for r in full_ranks] == [False, True]
    for r in full_ranks:
        # A fresh run: no EMA before the first RLP step (φ = θ is set there).
        assert r["start"]["step"] == 0 and r["start"]["ema_updates"] == 0 and not r["start"]["had_shadow"]
        assert r["totals"]["steps"] == ITERS and r["ema_updates"] == ITERS
        assert [s["step"] for s in r["steps"]] == list(range(1, ITERS + 1))
        assert all(s["generated_tokens"] > 0 and s["prefills"] == s["positions"] > 0 for s in r["steps"])
    # Both stages generated the same thoughts (broadcast ids): the same counts step by step.
    assert full_ranks[0]["steps"] == full_ranks[1]["steps"]
    full_lines = _metrics(full)
    assert [m["step"] for m in full_lines] == list(range(1, ITERS + 1))
    for m in full_lines:
        for key in (*EXACT, *CLOSE):
            assert key in m and math.isfinite(m[key]), (key, m.get(key))
        assert 0 < m["rlp thought length"] <= 8
    for it in (SAVE_AT, ITERS):
        assert (full / "checkpoints" / f"iter_{it:07d}" / "rlp_ema" / "metadata.json").exists(), it
    # The two stages hold different layers, so their EMA shards differ in number and shape.
    shapes = [[tuple(t.shape) for t in r["final_ema"]] for r in full_ranks]
    assert shapes[0] != shapes[1]

    # 2. Resumed in a fresh directory from the uninterrupted run's iteration-2 checkpoint: iterations 3 and 4.
    resumed = tmp_path / "resumed"
    res_ranks = run_distributed(_train, 2, data, str(resumed), str(full / "checkpoints"), timeout=600)
    assert [r["is_last"] for r in res_ranks] == [False, True]
    for rank, r in enumerate(res_ranks):
        assert r["start"]["step"] == SAVE_AT and r["start"]["consumed"] == SAVE_AT * 4  # Bridge loaded iteration 2
        restored = r["restored"]
        assert restored["same_shadow"], f"rank {rank} did not restore its own EMA shards"
        assert restored["saved_updates"] == SAVE_AT and restored["saved_totals"]["steps"] == SAVE_AT
        # The EMA and counters continue from the saved ones (a fresh EMA would restart at 0 and end at 2).
        assert r["start"]["ema_updates"] == SAVE_AT and r["start"]["totals"] == restored["saved_totals"]
        assert r["start"]["had_shadow"]
        assert r["ema_updates"] == ITERS and r["totals"]["steps"] == ITERS
        # Totals continue too: the generated tokens of iterations 1..4, as in the uninterrupted run.
        assert r["totals"]["generated_tokens"] == full_ranks[rank]["totals"]["generated_tokens"]
        # 3. Same rollouts as the uninterrupted run's iterations 3 and 4, on both stages.
        assert r["steps"] == full_ranks[rank]["steps"][SAVE_AT:]
    res_lines = _metrics(resumed)
    assert [m["step"] for m in res_lines] == list(range(SAVE_AT + 1, ITERS + 1))
    for got, ref in zip(res_lines, full_lines[SAVE_AT:]):
        for key in EXACT:
            assert got[key] == ref[key], (got["step"], key, got[key], ref[key])
        for key in CLOSE:
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=0.0), (got["step"], key, got[key], ref[key])
    # The EMA after iteration 4 is the uninterrupted run's, on each stage.
    for rank in (0, 1):
        got, ref = res_ranks[rank], full_ranks[rank]
        assert got["final_updates"] == ref["final_updates"] == ITERS
        for a, b in zip(got["final_ema"], ref["final_ema"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
