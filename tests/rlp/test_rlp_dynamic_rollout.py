"""Rollouts through megatron-core's DynamicInferenceEngine (prefix caching) over the live megatron GPTModel.

The engine's flash-attn kernels do not exist on CPU; :mod:`nemo_smartpt.testing.paged_attention` substitutes
reference paged-attention kernels (only the kernels: the engine, its paged KV cache, prefix caching, scheduler, stop
words and sampling are megatron-core's own). The reference for every comparison is our KV-cache sampler, itself tested
token for token against re-encoding without a cache.
"""

from __future__ import annotations

import pytest
import torch

from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineSampler
from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, RolloutCounters
from nemo_smartpt.testing.paged_attention import install_reference_paged_attention

STOP = (5, 6)  # a two-token </think>
BLOCK = 8


@pytest.fixture
def paged_attention():
    with install_reference_paged_attention():
        yield


@pytest.fixture
def gpt(single_process_group):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    return build_tiny_gpt(TinyGPTSpec(vocab_size=128, seq_length=128))


@pytest.fixture(params=["gpt", "llama"])
def decoder(request, single_process_group):
    """Both families of the tiny model; ``llama``: RoPE (rotated in the paged cache), GQA, SwiGLU, RMSNorm."""
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    return build_tiny_gpt(TinyGPTSpec(vocab_size=128, seq_length=128, family=request.param))


def _prompts(lengths=(20, 37, 9), seed=3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 120, (n,), generator=gen).tolist() for n in lengths]


def _dynamic(counters=None, **kwargs):
    kwargs.setdefault("temperature", 1.0)
    return DynamicEngineSampler(
        10, STOP, counters=counters, block_size_tokens=BLOCK, buffer_size_gb=0.01, max_prompt_tokens=64, **kwargs
    )


def test_greedy_equals_kv_cache_sampler_and_prefix_blocks_are_shared(decoder, paged_attention):
    prompts, G = _prompts(), 3
    counters = RolloutCounters()
    got = _dynamic(counters, greedy=True).generate_groups(decoder, prompts, G)
    ref = KVCacheSampler(10, STOP, temperature=1.0, greedy=True).generate_groups(decoder, prompts, G)
    for g, r in zip(got, ref):
        assert g.thoughts == r.thoughts
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(r.logprobs), rtol=1e-5, atol=1e-5)
    # Every prompt token of every request was either encoded or served from the prefix cache ...
    assert counters.prefill_tokens + counters.prefix_cached_tokens == G * sum(map(len, prompts))
    # ... and the cache served, for all but the first request of each group, every complete KV block of the prompt
    # except that megatron always recomputes at least two prompt tokens (a one-token prefill would take its decode
    # kernel): floor((P - 2) / block) blocks per request.
    assert counters.prefix_cached_tokens == (G - 1) * sum((len(p) - 2) // BLOCK * BLOCK for p in prompts)
    assert counters.groups == len(prompts) and counters.generated_tokens == sum(
        len(t) for g in got for t in g.thoughts
    )


def test_multi_token_stop_is_kept_and_ends_the_thought(gpt, paged_attention):
    # Find a stop pair the greedy model actually emits, so that stopping is exercised rather than the length limit.
    prompts = _prompts((21,), seed=5)
    free = KVCacheSampler(12, (126, 127), temperature=1.0, greedy=True).generate_groups(gpt, prompts, 2)[0].thoughts[0]
    stop = tuple(free[3:5])
    if stop[0] in free[:3] and free[free.index(stop[0]) + 1] == stop[1]:
        pytest.skip("the greedy continuation repeats the chosen pair earlier")
    got = DynamicEngineSampler(
        12, stop, temperature=1.0, greedy=True, block_size_tokens=BLOCK, buffer_size_gb=0.01, max_prompt_tokens=64
    ).generate_groups(gpt, prompts, 2)
    assert got[0].thoughts == [free[:5], free[:5]]
    assert len(got[0].logprobs[0]) == 5


def test_end_of_document_ends_a_thought_as_in_the_kv_cache_sampler(gpt, paged_attention):
    prompts, G = _prompts(), 2
    free = KVCacheSampler(10, STOP, temperature=1.0, greedy=True).generate_groups(gpt, prompts, G)
    eod = free[0].thoughts[0][2]  # the third greedy token of the first prompt becomes the end of document
    ref = KVCacheSampler(10, STOP, temperature=1.0, greedy=True, end_ids=(eod,)).generate_groups(gpt, prompts, G)
    got = _dynamic(greedy=True, end_ids=(eod,)).generate_groups(gpt, prompts, G)
    first = free[0].thoughts[0]
    assert ref[0].thoughts[0] == first[: first.index(eod) + 1]
    assert [g.thoughts for g in got] == [g.thoughts for g in ref]
    assert [len(lp) for g in got for lp in g.logprobs] == [len(t) for g in got for t in g.thoughts]


def test_sampling_is_seeded_and_rows_differ(gpt, paged_attention):
    prompts = _prompts()[:2]
    sampler = _dynamic(temperature=0.7)

    def run(seed):
        return [g.thoughts for g in sampler.generate_groups(gpt, prompts, 4, torch.Generator().manual_seed(seed))]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert len({tuple(t) for t in a[0]}) > 1  # G samples of one prompt are distinct draws


@pytest.mark.parametrize("release_kv", [True, False], ids=["release_kv", "persist_kv"])
def test_fresh_weights_are_never_served_from_a_stale_prefix_cache(gpt, paged_attention, release_kv):
    prompts = _prompts()
    sampler = _dynamic(greedy=True, release_kv=release_kv)
    before = sampler.generate_groups(gpt, prompts, 2)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = sampler.generate_groups(gpt, prompts, 2)  # the same engine, the same prompts, new weights
    ref = KVCacheSampler(10, STOP, temperature=1.0, greedy=True).generate_groups(gpt, prompts, 2)
    assert [g.thoughts for g in after] == [g.thoughts for g in ref]
    assert [g.thoughts for g in after] != [g.thoughts for g in before]


def test_training_forward_is_untouched_by_the_engine(gpt, paged_attention):
    from megatron.core.inference.utils import InferenceMode

    from nemo_smartpt.rlp.megatron.logprobs import causal_mask

    ids = torch.tensor([_prompts((16,))[0]])
    pos = torch.arange(16)[None]
    gpt.train()
    before = gpt(ids, pos, causal_mask(16, ids.device))
    _dynamic(temperature=0.7).generate_groups(gpt, _prompts(), 3, torch.Generator().manual_seed(0))
    assert not InferenceMode.is_active() and gpt.training
    assert all(p.grad is None for p in gpt.parameters())
    torch.testing.assert_close(gpt(ids, pos, causal_mask(16, ids.device)), before, rtol=0, atol=0)


def test_prompt_longer_than_the_engine_was_sized_for_is_named(gpt, paged_attention):
    from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineError

    with pytest.raises(DynamicEngineError, match="70 tokens.*max_prompt_tokens=64"):
        _dynamic(greedy=True).generate_groups(gpt, [list(range(70))], 2)


def _train_with_dynamic_engine(rank, world_size, data_dir: str, out_dir: str):
    from megatron.bridge.training.pretrain import pretrain

    from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineSampler
    from nemo_smartpt.testing.rlp_runs import tiny_rlp_run

    engine = dict(generation_engine="dynamic", dynamic_block_size_tokens=BLOCK, dynamic_buffer_size_gb=0.01)
    cfg, forward_step, callbacks = tiny_rlp_run(
        data_dir, out_dir, rlp=dict(min_context=12, **engine), train_iters=2, global_batch_size=4, micro_batch_size=2
    )
    with install_reference_paged_attention():
        pretrain(cfg, forward_step, callbacks=callbacks)
    run = callbacks[0].run
    return type(run.preparer.sampler) is DynamicEngineSampler, run.totals


@pytest.mark.slow
@pytest.mark.distributed
def test_rlp_trains_through_bridge_pretrain_with_the_dynamic_engine(tmp_path):
    import json
    import math

    from nemo_smartpt.testing.distributed import run_distributed
    from nemo_smartpt.testing.rlp_runs import write_tiny_rlp_corpus

    write_tiny_rlp_corpus(tmp_path / "data", min_len=16)
    out = tmp_path / "run"
    ((used_engine, totals),) = run_distributed(
        _train_with_dynamic_engine, 1, str(tmp_path / "data"), str(out), timeout=600
    )
    assert used_engine and totals["steps"] == 2 and totals["generated_tokens"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("rlp loss", "rlp reward mean", "rlp s_pred mean", "rlp s_ema mean", "rlp thought length"):
            assert math.isfinite(m[key]), key
        # Contexts of >= 12 tokens behind a one-token prompt: every group after its first request reuses >= 1 block.
        assert m["rlp prefix cached tokens"] >= (4 - 1) * BLOCK * m["rlp positions"] > 0


TP_PROMPTS = [[5, 9, 33, 7, 11, 40, 2, 18, 90, 3, 66, 12], [64, 2, 17, 88, 31, 9, 9, 101, 4, 57]]


def _tp_reference(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = build_tiny_gpt(TinyGPTSpec(vocab_size=128, seq_length=64))
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    greedy = KVCacheSampler(8, STOP, temperature=1.0, greedy=True).generate_groups(model, TP_PROMPTS, 3)
    return [g.thoughts for g in greedy]


def _tp_dynamic(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel, load_full_state_dict

    init_model_parallel(2, 1, seed=99)  # a different seed: the weights come from the reference
    spec = TinyGPTSpec(vocab_size=128, seq_length=64)
    model = build_tiny_gpt(spec)
    load_full_state_dict(model, torch.load(state_path), spec.num_layers)
    kw = dict(block_size_tokens=BLOCK, buffer_size_gb=0.01, max_prompt_tokens=32)
    with install_reference_paged_attention():
        greedy = DynamicEngineSampler(8, STOP, temperature=1.0, greedy=True, **kw).generate_groups(
            model, TP_PROMPTS, 3
        )
        sampled = DynamicEngineSampler(8, STOP, temperature=0.7, **kw).generate_groups(
            model, TP_PROMPTS, 4, torch.Generator().manual_seed(8)
        )
    return [g.thoughts for g in greedy], [g.thoughts for g in sampled]


@pytest.mark.slow
@pytest.mark.distributed
def test_dynamic_engine_under_tp2_matches_single_process_greedy_and_ranks_agree(tmp_path):
    from nemo_smartpt.testing.distributed import run_distributed

    state = str(tmp_path / "state.pt")
    (reference,) = run_distributed(_tp_reference, 1, state, timeout=300)
    (greedy0, sampled0), (greedy1, sampled1) = run_distributed(_tp_dynamic, 2, state, timeout=300)
    assert greedy0 == greedy1 == reference  # vocab-parallel logits, same argmax as the unsplit model
    assert sampled0 == sampled1  # both TP ranks draw the same thoughts (same seed on every TP rank)
    assert len({tuple(t) for t in sampled0[0]}) > 1


def test_engine_choice_follows_kernels_and_pipeline_size(monkeypatch):
    from nemo_smartpt.rlp.megatron import prepare
    from nemo_smartpt.rlp.megatron.logprobs import RLPPipelineError

    assert prepare.resolve_generation_engine("auto") == "kv_cache"  # no CUDA here
    assert prepare.resolve_generation_engine("dynamic") == "dynamic"
    monkeypatch.setattr(prepare, "pipeline_size", lambda: 2)  # two stages without starting two processes
    assert prepare.resolve_generation_engine("kv_cache") == "kv_cache"
    with pytest.raises(RLPPipelineError, match="generation_engine=kv_cache"):
        prepare.resolve_generation_engine("dynamic")
