"""RLP with pipeline *and* data parallelism (PP=2 × DP=2, four gloo processes) through Bridge's ``pretrain()`` equals
the same run without pipeline parallelism (PP=1 × DP=2, two processes).

Both runs train 3 iterations on the same indexed data with global batch 8 and micro-batch 2 (two micro-batches per DP
rank and step), with the same RLP config and seed. Bridge seeds pipeline stage k with ``seed + 100·k``, so under PP=2
the second stage's native initialisation differs from the PP=1 model's (Megatron's design, not an RLP issue); the PP=1
run therefore saves its initial weights at train start and the PP=2 run loads them (layers renumbered per stage, the
last stage's tied output layer from the word embedding) before the RLP callback sets φ = θ. The test proves that:

- under PP each DP rank prepares exactly the samples Bridge's ``MegatronPretrainingSampler`` gives that DP rank
  without PP (``PipelineFeed`` reads them ahead of the schedule): the same packed tokens micro-batch by micro-batch,
  on both stages of each DP rank, while the two DP ranks read different samples;
- the rollouts are the same token for token (seeded per step, DP rank and micro-batch; sampled on the last stage and
  broadcast), with the same positions, prefills and generated-token counts per DP rank and step, and the same S_ema;
- the per-step metrics in ``metrics.jsonl`` agree: the writer's (DP-0) own counts exactly, the DP-reduced loss-side
  means (reward, S_pred, S_ema, advantage std, thought length, ...) exactly or to rel 1e-5;
- training follows the same trajectory: after every step each stage's weights equal the PP=1 model's (to 1e-6), and
  the two DP replicas of each stage are identical;
- both DP ranks of the PP run did work, and exactly one rank (pipeline-last, DP-0) writes the metrics.
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

ITERS = 3
GLOBAL_BATCH, MICRO_BATCH, DP = 8, 2, 2  # 8 / (2 · 2) = 2 micro-batches per DP rank and step
NUM_MICRO = GLOBAL_BATCH // (MICRO_BATCH * DP)
# Tolerances. The PP run executes the same per-layer ops split over two processes (fp32 hidden states sent as they
# are), so it differs from PP=1 only in the order of float reductions: the tied word embedding's two gradient
# contributions (input lookup on stage 0, output projection on stage 1) are summed by Megatron's embedding-group
# all-reduce instead of accumulating in one tensor. Measured on CPU: weights after update 1 are bit-identical (Adam's
# first step is ~lr·sign(g)), after update 2 the word embedding differs by 1 ulp (3.7e-9), after update 3 every weight
# by ≤ 4.3e-7 (a few ulps of |w| ≤ 0.08); steps 1-2 metrics are bit-identical, step 3's differ by ≤ 3.4e-7 relative.
# Hence rel 1e-5 for float metrics, and 1e-6 absolute for weights (1/3000 of one Adam step at lr 3e-3: a wrong sample,
# rollout or missing gradient would move weights by ~lr).
CLOSE_REL = 1e-5
WEIGHT_ATOL = 1e-6
# The RLP loss is Σ A·ratio / N with zero-sum group advantages and ratio ≡ 1: zero in exact arithmetic, so its value
# (~1e-10) is float32 cancellation noise of terms |A| ≈ 0.1, i.e. up to ~eps_f32·|A| ≈ 1e-8, and has no relative
# precision (step 3: 2.4e-11 vs 3.1e-10). It is compared with that absolute tolerance; its gradient is checked through
# the weights.
LOSS_ATOL = 1e-8
# metrics.jsonl keys. EXACT: the writer's (DP-0 rank's) own counts, and DP-reduced means of integer counts (exact in
# float). CLOSE: DP-reduced float means (Bridge sums [value, count] pairs over micro-batches and DP, then divides).
EXACT = (
    "rlp positions",
    "rlp prefills",
    "rlp skipped documents",
    "rlp thought length",
    "rlp trained thought length",
    "rlp truncation rate",
    "rlp ratio mean",
)
CLOSE = (
    "rlp reward mean",
    "rlp reward std",
    "rlp s_pred mean",
    "rlp s_ema mean",
    "rlp advantage std",
    "rlp positive gain fraction",
)
TIED = "output_layer.weight"  # on the last stage under PP (shared embeddings): a copy of the word embedding


def _global_params(gpt) -> dict[str, torch.nn.Parameter]:
    """This stage's parameters under their PP=1 names (the tied output layer as ``embedding...weight@out``)."""
    from megatron.core import parallel_state

    from nemo_smartpt.testing.megatron import global_name

    per_stage = gpt.config.num_layers // parallel_state.get_pipeline_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    out = {}
    for name, param in gpt.named_parameters():
        key = "embedding.word_embeddings.weight@out" if name == TIED else global_name(name, per_stage, pp_rank)
        out[key] = param
    return out


def _callback_classes():
    from megatron.bridge.training.callbacks import Callback

    from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

    class InitWeights(Callback):
        """Registered before the RLP callback: PP=1 saves its initial weights, PP=2 loads them (before φ = θ)."""

        def __init__(self, path: str, save: bool):
            self.path, self.save = path, save
            self.native_max_diff = None

        def on_train_start(self, context):
            params = _global_params(unwrap_model(context.model))
            if self.save:
                if torch.distributed.get_rank() == 0:  # DP replicas start identical
                    torch.save({k: p.detach().clone() for k, p in params.items()}, self.path)
                torch.distributed.barrier()
                return
            full = torch.load(self.path)
            diff = 0.0
            with torch.no_grad():
                for key, param in params.items():
                    source = full[key.removesuffix("@out")]
                    diff = max(diff, float((param - source).abs().max()))
                    param.copy_(source)
            self.native_max_diff = diff  # how far Bridge's own PP=2 initialisation was from PP=1's (reported only)

    class Probe(Callback):
        """Registered after the RLP callback: this rank's coordinates, per-step counts and weights."""

        def __init__(self, run):
            self.run = run
            self.layout = None
            self.steps = []
            self.weights = []

        def on_train_start(self, context):
            from megatron.core import parallel_state

            from nemo_smartpt.rlp.megatron.step_metrics import is_metrics_writer

            # pretrain() tears the parallel state down on exit: read this rank's coordinates while it exists.
            self.layout = {
                "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                "dp_rank": parallel_state.get_data_parallel_rank(),
                "dp_size": parallel_state.get_data_parallel_world_size(),
                "is_last": parallel_state.is_pipeline_last_stage(),
                "writer": is_metrics_writer(),
            }

        def on_train_step_end(self, context):
            params = _global_params(unwrap_model(context.model))
            self.weights.append({k: p.detach().clone() for k, p in params.items()})
            stats = self.run.preparer.stats
            self.steps.append(
                {
                    "step": self.run.last_metrics["step"],
                    "positions": stats.positions,
                    "documents": stats.documents,
                    "generated_tokens": stats.generated_tokens,
                    "prefills": self.run.counters.prefills,
                }
            )

    return InitWeights, Probe


def _record_preparation(run, records: list) -> None:
    """Wrap this run's preparer (instance attribute): keep each micro-batch's tokens, rollout rows and S_ema."""
    prepare = run.preparer.prepare

    def recording(tokens_bS, model, step, microbatch=0, dp_rank=0, **kwargs):
        batch = prepare(tokens_bS, model, step=step, microbatch=microbatch, dp_rank=dp_rank, **kwargs)
        records.append(
            {
                "key": (step, microbatch, dp_rank),
                # Plain lists: tensors would cross the result queue as shared-memory handles of an exited process.
                "tokens": tokens_bS.detach().cpu().long().tolist(),
                "input_ids": batch["input_ids_NL"].cpu().tolist(),
                "s_ema": batch["s_ema_B"].cpu().tolist(),
            }
        )
        return batch

    run.preparer.prepare = recording


def _train(rank, world_size, data_dir: str, out_dir: str, pipeline_parallel: int, init_path: str):
    from megatron.bridge.training.pretrain import pretrain

    # DP = world_size / (TP · PP) = 2 in both runs (Megatron derives it from the world size).
    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir,
        out_dir,
        train_iters=ITERS,
        global_batch_size=GLOBAL_BATCH,
        micro_batch_size=MICRO_BATCH,
        pipeline_parallel=pipeline_parallel,
    )
    run = callbacks[0].run
    records: list = []
    _record_preparation(run, records)
    init_cls, probe_cls = _callback_classes()
    init = init_cls(init_path, save=pipeline_parallel == 1)
    probe = probe_cls(run)
    pretrain(cfg, forward_step, callbacks=[init, *callbacks, probe])
    torch.save(probe.weights, str(Path(out_dir) / f"weights_rank{rank}.pt"))
    return {
        **probe.layout,
        "totals": dict(run.totals),
        "ema_updates": run.ema.num_updates,
        "steps": probe.steps,
        "records": records,
        "native_max_diff": init.native_max_diff,
    }


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _check_ranks(ranks: list[dict], pp: int) -> None:
    assert sorted((r["pp_rank"], r["dp_rank"]) for r in ranks) == [(p, d) for p in range(pp) for d in range(DP)]
    assert all(r["dp_size"] == DP for r in ranks)
    writers = [(r["pp_rank"], r["dp_rank"]) for r in ranks if r["writer"]]
    assert writers == [(pp - 1, 0)], writers  # exactly one metrics writer: pipeline-last, DP-0
    for r in ranks:
        where = (r["pp_rank"], r["dp_rank"])
        assert r["totals"]["steps"] == ITERS and r["ema_updates"] == ITERS, where
        assert r["totals"]["generated_tokens"] > 0, where  # every DP rank (and stage) did work
        assert [s["step"] for s in r["steps"]] == list(range(1, ITERS + 1)), where
        assert all(s["generated_tokens"] > 0 and s["prefills"] == s["positions"] > 0 for s in r["steps"]), where
        # Each micro-batch prepared once on this rank, keyed by this rank's DP index.
        expected = [(step, mb, r["dp_rank"]) for step in range(ITERS) for mb in range(NUM_MICRO)]
        assert [x["key"] for x in r["records"]] == expected, where


def _same_preparation(got: list[dict], ref: list[dict], where) -> None:
    assert [x["key"] for x in got] == [x["key"] for x in ref], where
    for a, b in zip(got, ref):
        assert a["tokens"] == b["tokens"], (where, a["key"], "samples")
        assert a["input_ids"] == b["input_ids"], (where, a["key"], "rollouts")
        assert a["s_ema"] == pytest.approx(b["s_ema"], rel=CLOSE_REL, abs=0.0), (where, a["key"], "s_ema")


def test_rlp_pp2_dp2_through_bridge_pretrain_matches_pp1_dp2(tmp_path):
    write_tiny_rlp_corpus(tmp_path / "data")
    data, init_path = str(tmp_path / "data"), str(tmp_path / "init.pt")

    # B: PP=1 × DP=2 (two processes); saves its initial weights for A.
    out_b = tmp_path / "pp1_dp2"
    ranks_b = run_distributed(_train, 2, data, str(out_b), 1, init_path, timeout=600)
    _check_ranks(ranks_b, pp=1)
    # A: PP=2 × DP=2 (four processes), from B's initial weights.
    out_a = tmp_path / "pp2_dp2"
    ranks_a = run_distributed(_train, 4, data, str(out_a), 2, init_path, timeout=900)
    _check_ranks(ranks_a, pp=2)

    # 1. Per DP rank: the same samples, rollouts, S_ema and counts as without PP, on both stages.
    by_dp_b = {r["dp_rank"]: r for r in ranks_b}
    # The two DP ranks read different samples, so a swapped or shared DP order under PP would show.
    assert all(x["tokens"] != y["tokens"] for x, y in zip(by_dp_b[0]["records"], by_dp_b[1]["records"]))
    for r in ranks_a:
        where = f"PP rank {r['pp_rank']}, DP rank {r['dp_rank']}"
        ref = by_dp_b[r["dp_rank"]]
        _same_preparation(r["records"], ref["records"], where)
        assert r["steps"] == ref["steps"], where  # positions, documents, generated tokens, prefills per step
        assert r["totals"]["generated_tokens"] == ref["totals"]["generated_tokens"], where

    # 2. The per-step metrics lines (one writer each: one line per step).
    lines_a, lines_b = _metrics(out_a), _metrics(out_b)
    assert [m["step"] for m in lines_a] == [m["step"] for m in lines_b] == list(range(1, ITERS + 1))
    for got, ref in zip(lines_a, lines_b):
        for key in ("rlp loss", *EXACT, *CLOSE):
            assert key in got and key in ref and math.isfinite(ref[key]), (key, ref.get(key))
        assert 0 < ref["rlp thought length"] <= 8
        for key in EXACT:
            assert got[key] == ref[key], (got["step"], key, got[key], ref[key])
        for key in CLOSE:
            assert got[key] == pytest.approx(ref[key], rel=CLOSE_REL, abs=0.0), (got["step"], key, got[key], ref[key])
        assert got["rlp loss"] == pytest.approx(ref["rlp loss"], rel=CLOSE_REL, abs=LOSS_ATOL), got["step"]
    # The writer's counts are its own (DP rank 0's) work, as the probe saw it on that rank.
    writer_a = next(r for r in ranks_a if r["writer"])
    assert [(m["rlp positions"], m["rlp prefills"]) for m in lines_a] == [
        (s["positions"], s["prefills"]) for s in writer_a["steps"]
    ]
    assert writer_a["steps"] != by_dp_b[1]["steps"]  # DP-1's counts differ: the metrics are not DP-1's work

    # 3. The same training trajectory: every stage's weights after every step equal PP=1's; DP replicas identical.
    weights_b = torch.load(out_b / "weights_rank0.pt")
    weights_a = [torch.load(out_a / f"weights_rank{rank}.pt") for rank in range(4)]
    covered = set()
    for rank, r in enumerate(ranks_a):
        assert len(weights_a[rank]) == ITERS
        for step, (got, ref) in enumerate(zip(weights_a[rank], weights_b), start=1):
            for key, value in got.items():
                torch.testing.assert_close(
                    value, ref[key.removesuffix("@out")], rtol=0.0, atol=WEIGHT_ATOL, msg=f"rank {rank} {step} {key}"
                )
            covered |= {key.removesuffix("@out") for key in got}
        twin = next(o for o, x in enumerate(ranks_a) if x["pp_rank"] == r["pp_rank"] and x["dp_rank"] != r["dp_rank"])
        for got, other in zip(weights_a[rank], weights_a[twin]):
            assert all(torch.equal(got[k], other[k]) for k in got), (rank, twin)
    assert covered == set(weights_b[0])  # the two stages together hold the whole model
