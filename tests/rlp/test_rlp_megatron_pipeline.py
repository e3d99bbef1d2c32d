"""RLP generation and preparation under pipeline parallelism (PP=2 on two gloo processes) and inside ``pretrain()``.

The reference process builds the tiny GPT, saves its weights and records greedy KV-cache rollouts and prepared
micro-batches (positions, sampled rollouts at T = 0.7, EMA baseline with φ ≠ θ). The PP=2 run loads exactly those
weights and must reproduce them stage to stage: the same thoughts token for token, the same prepared tensors on both
stages, and one prefill per group. Finally a short RLP run goes through Bridge's ``pretrain()`` with PP=2.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from nemo_smartpt.rlp import RLPConfig, ThoughtLayout
from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.megatron import TinyGPTSpec

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SPEC = TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128, seq_length=48)
EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)
CFG = RLPConfig(num_rollouts=4, max_thought_tokens=6, min_context=3, max_context=12, seed=3)
PROMPTS = [[5, 9, 33, 7], [64, 2]]


def _tokens():
    gen = torch.Generator().manual_seed(4)
    # Two packed samples of two documents each: several groups per micro-batch.
    tokens = torch.randint(0, 119, (2, 2, 20), generator=gen)
    tokens[:, :, 9] = EOD
    return tokens


def _generate_and_prepare(model):
    from nemo_smartpt.rlp import ParamEMA
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler

    greedy = KVCacheSampler(max_new_tokens=6, stop_ids=(122,), greedy=True)
    thoughts = [g.thoughts for g in greedy.generate_groups(model, PROMPTS, 3)]
    ema = ParamEMA(0.5)
    ema.initialize(list(model.parameters()))
    with torch.no_grad():  # φ ≠ θ: S_ema must come from the swapped-in weights on every stage
        ema.shadow = [s * 0.9 for s in ema.shadow]
    prep = RLPPreparer(CFG.validate(), LAYOUT, EOD, ema=ema)
    batches = [prep.prepare(t, model, step=0, microbatch=mb) for mb, t in enumerate(_tokens())]
    counts = (greedy.counters.groups, greedy.counters.prefills, prep.counters.groups, prep.counters.prefills)
    return thoughts, batches, counts


def _reference(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = build_tiny_gpt(SPEC)
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    return _generate_and_prepare(model)


def _pipeline(rank, world_size, state_path):
    from megatron.core import parallel_state

    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel, load_full_state_dict

    init_model_parallel(1, 2, seed=99)  # a different seed: the weights must come from the reference
    model = build_tiny_gpt(SPEC)
    load_full_state_dict(model, torch.load(state_path), SPEC.num_layers)
    return _generate_and_prepare(model) + (parallel_state.is_pipeline_last_stage(),)


def test_pp2_generation_and_preparation_match_single_stage(tmp_path):
    state_path = str(tmp_path / "s.pt")
    ((ref_thoughts, ref_batches, ref_counts),) = run_distributed(_reference, 1, state_path, timeout=300)
    assert ref_counts[0] == ref_counts[1] == len(PROMPTS)  # one prefill per group
    assert ref_counts[2] == ref_counts[3] > len(ref_batches)  # several groups per micro-batch, one prefill each
    results = run_distributed(_pipeline, 2, state_path, timeout=300)
    assert [r[3] for r in results] == [False, True]
    for thoughts, batches, counts, _ in results:
        assert thoughts == ref_thoughts  # greedy, token for token, on both stages
        assert counts == ref_counts  # prefills counted once per group on every stage
        assert len(batches) == len(ref_batches)
        for got, ref in zip(batches, ref_batches):
            assert sorted(got) == sorted(ref)
            assert bool(got["has_s_ema"])
            for key in ref:
                if key in ("s_ema_B", "rollout_logp_NL"):
                    torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
                else:
                    assert torch.equal(got[key], ref[key]), key  # positions, sampled thoughts, masks: exact


ITERS = 2


def _train(rank, world_size, data_dir: str, out_dir: str):
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.testing.rlp_runs import tiny_rlp_run

    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir, out_dir, train_iters=ITERS, global_batch_size=4, micro_batch_size=2, pipeline_parallel=2
    )
    pretrain(cfg, forward_step, callbacks=callbacks)
    run = callbacks[0].run
    return run.totals, run.ema.num_updates, run.last_metrics, rank == world_size - 1  # rank 1: the last stage


def test_rlp_runs_through_bridge_pretrain_with_pp2(tmp_path):
    from nemo_smartpt.testing.rlp_runs import write_tiny_rlp_corpus

    write_tiny_rlp_corpus(tmp_path / "data")
    out = tmp_path / "run"
    results = run_distributed(_train, 2, str(tmp_path / "data"), str(out), timeout=600)
    assert [r[3] for r in results] == [False, True]
    for totals, ema_updates, metrics, _ in results:
        assert totals["steps"] == ITERS and ema_updates == ITERS and totals["generated_tokens"] > 0
        assert metrics["rlp prefills"] == metrics["rlp positions"] > 0  # one prefill per group, on every stage
    # Both stages generated the same thoughts (broadcast ids): identical generation counts.
    assert results[0][0]["generated_tokens"] == results[1][0]["generated_tokens"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]  # written by the last stage
    assert [m["step"] for m in lines] == list(range(1, ITERS + 1))
    for m in lines:
        for key in ("rlp loss", "rlp reward mean", "rlp s_pred mean", "rlp s_ema mean", "rlp thought length"):
            assert key in m and math.isfinite(m[key]), (key, m.get(key))
        assert 0 < m["rlp thought length"] <= 8


@pytest.mark.parametrize("consumed,dp_size", [(0, 1), (8, 2), (24, 3)])
def test_sampler_indices_follow_bridge_pretraining_sampler(consumed, dp_size):
    from megatron.bridge.data.samplers import MegatronPretrainingSampler

    from nemo_smartpt.rlp.megatron.pipeline import sampler_indices

    mbs, num_micro = 2, 3
    for dp_rank in range(dp_size):
        sampler = MegatronPretrainingSampler(
            total_samples=1000,
            consumed_samples=consumed,
            micro_batch_size=mbs,
            data_parallel_rank=dp_rank,
            data_parallel_size=dp_size,
        )
        it = iter(sampler)
        expected = [next(it) for _ in range(num_micro)]
        assert [list(sampler_indices(consumed, k, mbs, dp_rank, dp_size)) for k in range(num_micro)] == expected
