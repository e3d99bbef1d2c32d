"""RLP on megatron-core's ``HybridModel`` (the model class of Nemotron-H), with an attention/MLP pattern on CPU.

``*-*-`` with the GPT local spec's sublayers is the network of a two-layer GPT (``nemo_smartpt.testing.hybrid``).
Loaded with the GPT's weights, the hybrid model must give the GPT's logits, the same KV-cache rollouts (greedy
and seeded), the same prepared RLP micro-batches (positions, thoughts, EMA baseline), and the same RLP loss, metrics
and gradient for every parameter, in both layouts of the training forward (per row and shared prefix). Both models
have the Llama shape (RoPE, GQA, SwiGLU, RMSNorm, untied output layer).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler, NoCacheSampler
from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func
from nemo_smartpt.testing.hybrid import build_tiny_hybrid, gpt_name, load_gpt_weights
from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)
SPEC = TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128, seq_length=64, family="llama")


@pytest.fixture
def twins(single_process_group):
    gpt = build_tiny_gpt(SPEC)
    hybrid = build_tiny_hybrid(SPEC)
    load_gpt_weights(hybrid, gpt)
    return gpt, hybrid


def _tokens():
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(1, 119, (2, 24), generator=gen)
    body[0, 11] = EOD
    body[1, 15] = EOD
    return body


def test_hybrid_model_is_the_gpt_network(twins):
    gpt, hybrid = twins
    from megatron.core.models.hybrid.hybrid_model import HybridModel

    assert isinstance(hybrid, HybridModel) and len(hybrid.decoder.layers) == 2 * SPEC.num_layers
    tokens = _tokens()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        got = hybrid(tokens, positions, attention_mask=None)
        ref = gpt(tokens, positions, attention_mask=None)
    assert got.shape == (2, 24, SPEC.vocab_size)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_hybrid_rollouts_equal_the_gpt_ones_and_the_no_cache_ones(twins):
    gpt, hybrid = twins
    prompts = [[5, 9, 33, 7, 120, 121], [64, 2, 120, 121]]
    greedy = [KVCacheSampler(max_new_tokens=8, stop_ids=(122,), greedy=True) for _ in range(2)]
    got = [g.thoughts for g in greedy[0].generate_groups(hybrid, prompts, 3)]
    assert got == [g.thoughts for g in greedy[1].generate_groups(gpt, prompts, 3)]
    naive = NoCacheSampler(max_new_tokens=8, stop_ids=(122,), greedy=True)
    assert got == [g.thoughts for g in naive.generate_groups(hybrid, prompts, 3)]
    assert greedy[0].counters.prefills == len(prompts)  # one prefill per group on the hybrid stack too

    def sampled(model):
        sampler = KVCacheSampler(max_new_tokens=8, stop_ids=(122,), temperature=0.7)
        return [g.thoughts for g in sampler.generate_groups(model, prompts, 4, torch.Generator().manual_seed(3))]

    assert sampled(hybrid) == sampled(gpt)


@pytest.mark.parametrize("shared_prefix", [False, True], ids=["per_row", "shared_prefix"])
def test_rlp_step_on_the_hybrid_model_equals_the_gpt_step(twins, shared_prefix):
    gpt, hybrid = twins
    cfg = RLPConfig(
        num_rollouts=4,
        max_thought_tokens=6,
        min_context=3,
        max_context=12,
        seed=5,
        logits_chunk_tokens=7,
        shared_prefix_forward=shared_prefix,
    ).validate()
    results = {}
    for name, model in (("gpt", gpt), ("hybrid", hybrid)):
        ema = ParamEMA(0.9)
        ema.initialize(list(model.parameters()))
        with torch.no_grad():  # φ ≠ θ, so the baseline really comes from the swapped-in weights
            ema.shadow = [s * 0.9 for s in ema.shadow]
        prep = RLPPreparer(cfg, dataclasses.replace(LAYOUT, truncation=cfg.truncation), EOD, ema=ema)
        batch = prep.prepare(_tokens(), model, step=0)
        model.zero_grad()
        loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = batch, loss, count, metrics, grads

    (batch_g, loss_g, count_g, metrics_g, grads_g), (batch_h, loss_h, count_h, metrics_h, grads_h) = results.values()
    assert set(batch_g) == set(batch_h) and ("sp_input_ids_RS" in batch_h) == shared_prefix
    for key in batch_g:  # same positions, thoughts, sampler log-probs and baseline
        torch.testing.assert_close(batch_h[key], batch_g[key], rtol=1e-5, atol=1e-6, msg=key)
    assert int(count_h) == int(count_g) > 0
    torch.testing.assert_close(loss_h, loss_g, rtol=1e-5, atol=1e-7)
    for key in metrics_g:
        torch.testing.assert_close(metrics_h[key], metrics_g[key], rtol=1e-5, atol=1e-6, msg=key)
    assert {gpt_name(n) for n in grads_h} == set(grads_g)
    for name, grad in grads_h.items():
        torch.testing.assert_close(grad, grads_g[gpt_name(name)], rtol=1e-4, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in grads_g.values())
