"""KV-cache rollouts over the real megatron-core GPTModel: equal to re-encoding, one prefill per group.

The equality tests run on both architecture families of the tiny model: GPT-2 style (learned positions, LayerNorm,
GeLU) and Llama style (RoPE, whose cached keys carry their rotation; GQA, whose cache holds fewer KV heads; SwiGLU;
RMSNorm; untied output layer)."""

from __future__ import annotations

import pytest
import torch

from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, NoCacheSampler, RolloutCounters, sample_tokens

STOP = (5, 6)  # a two-token </think>, to exercise multi-token stop matching


@pytest.fixture(params=["gpt", "llama"])
def decoder(request):
    return request.getfixturevalue("tiny_gpt" if request.param == "gpt" else "tiny_llama")


def test_tiny_llama_has_the_llama_shape(tiny_llama):
    config = tiny_llama.config
    assert tiny_llama.position_embedding_type == "rope"
    assert config.num_query_groups == 2 < config.num_attention_heads == 4
    assert config.gated_linear_unit and config.normalization == "RMSNorm"
    assert not tiny_llama.share_embeddings_and_output_weights
    assert not [n for n, _ in tiny_llama.named_parameters() if n.endswith(".bias")]


def _prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 120, (n,), generator=gen).tolist() for n in (7, 12, 4)]


def test_kv_cache_greedy_equals_no_cache(decoder):
    counters = RolloutCounters()
    cached = KVCacheSampler(max_new_tokens=10, stop_ids=STOP, greedy=True, counters=counters)
    naive = NoCacheSampler(max_new_tokens=10, stop_ids=STOP, greedy=True)
    prompts = _prompts()
    got = cached.generate_groups(decoder, prompts, num_samples=3)
    ref = naive.generate_groups(decoder, prompts, num_samples=3)
    for g, r in zip(got, ref):
        assert g.thoughts == r.thoughts
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(r.logprobs), rtol=1e-5, atol=1e-5)
        assert all(len(t) == 10 or tuple(t[-2:]) == STOP for t in g.thoughts)
    # The shared prefix is encoded once per group, never per rollout.
    assert counters.prefills == len(prompts) == counters.groups
    assert counters.prefill_tokens == sum(len(p) for p in prompts)
    assert naive.counters.prefills == 0 and naive.counters.full_forwards > counters.prefills


def test_kv_cache_sampling_matches_no_cache_and_is_deterministic(decoder):
    prompts = _prompts()[:2]

    def run(cls, seed):
        sampler = cls(max_new_tokens=6, stop_ids=STOP, temperature=0.7)
        return sampler.generate_groups(decoder, prompts, 4, torch.Generator().manual_seed(seed))

    a, b, c = run(KVCacheSampler, 1), run(KVCacheSampler, 1), run(NoCacheSampler, 1)
    assert [g.thoughts for g in a] == [g.thoughts for g in b]
    assert [g.thoughts for g in a] == [g.thoughts for g in c]
    assert [g.thoughts for g in a] != [g.thoughts for g in run(KVCacheSampler, 2)]
    # Samples within a group differ (the cache copy is per row, not shared storage).
    assert len({tuple(t) for t in a[0].thoughts}) > 1


def test_generation_restores_train_mode_and_no_grad(tiny_gpt):
    tiny_gpt.train()
    sampler = KVCacheSampler(max_new_tokens=3, stop_ids=STOP, greedy=True)
    sampler.generate_groups(tiny_gpt, _prompts()[:1], 2)
    assert tiny_gpt.training
    assert all(p.grad is None for p in tiny_gpt.parameters())


def test_sample_tokens_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_tokens(logits, 1.0, top_p=0.7, generator=gen)[0]) for _ in range(200)}
    assert draws == {0, 1}
    with pytest.raises(ValueError):
        KVCacheSampler(max_new_tokens=0, stop_ids=STOP)


def test_end_of_document_ends_a_thought_in_the_kv_cache_sampler(tiny_gpt):
    prompts = _prompts()
    free = KVCacheSampler(max_new_tokens=10, stop_ids=STOP, greedy=True).generate_groups(tiny_gpt, prompts, 2)
    eod = free[0].thoughts[0][2]  # the third greedy token of the first prompt becomes the end of document
    got = KVCacheSampler(max_new_tokens=10, stop_ids=STOP, greedy=True, end_ids=(eod,)).generate_groups(
        tiny_gpt, prompts, 2
    )
    ref = NoCacheSampler(max_new_tokens=10, stop_ids=STOP, greedy=True, end_ids=(eod,)).generate_groups(
        tiny_gpt, prompts, 2
    )
    first = free[0].thoughts[0]
    assert got[0].thoughts[0] == first[: first.index(eod) + 1]  # cut right after the EOD
    assert [g.thoughts for g in got] == [g.thoughts for g in ref]
    for g, f in zip(got, free):
        for t, u in zip(g.thoughts, f.thoughts):
            assert t == (u[: u.index(eod) + 1] if eod in u else u)
