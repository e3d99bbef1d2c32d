"""FLOP accounting against hand-counted references, and the paper's NTP-equivalent formula."""

import pytest

from nemo_smartpt.rlp import (
    ModelFlopsSpec,
    RLPConfig,
    flop_matched_ntp_tokens,
    ntp_flops_per_token,
    ours_ntp_equivalent_tokens,
    paper_ntp_equivalent_tokens,
    rlp_step_flops,
    rlp_step_flops_from_config,
)
from nemo_smartpt.rlp.flops import forward_flops

N = 1.0e6


def ref_forward(n_params, layers, d, start, end):
    total = 0.0
    for p in range(start, end):
        total += 2 * n_params + 4 * layers * d * (p + 1)
    return total


@pytest.mark.parametrize("start,end", [(0, 1), (0, 17), (5, 40), (9, 9)])
def test_forward_flops_closed_form(start, end):
    spec = ModelFlopsSpec(N, num_attn_layers=3, attn_dim=64)
    assert forward_flops(spec, start, end) == pytest.approx(ref_forward(N, 3, 64, start, end))


def test_paper_formula_reproduces_its_numbers():
    # n=16, bs=512, iters=200, T_inp=170M: l_seq=4096 gives the paper's "≈ 6B"; l_seq=2048 gives 3.5B.
    assert paper_ntp_equivalent_tokens(16, 4096, 512, 200, 170e6) == pytest.approx(6.88e9, rel=1e-3)
    assert paper_ntp_equivalent_tokens(16, 2048, 512, 200, 170e6) == pytest.approx(3.525e9, rel=1e-3)


def test_step_flops_without_attention_by_hand():
    spec = ModelFlopsSpec(N)
    B, G, P, R, base = 2, 4, 10, 5, 7
    s = rlp_step_flops(spec, B, G, P, R, base)
    assert s.generation == pytest.approx(B * (2 * N * P + G * 2 * N * (R - 1)))  # prefill once, cached decode
    assert s.training == pytest.approx(B * G * 6 * N * (P + R))
    assert s.baseline == pytest.approx(B * 2 * N * base)  # once per position, not per rollout
    assert s.ntp == 0 and s.total == pytest.approx(s.generation + s.training + s.baseline)
    assert (s.generated_tokens, s.trained_tokens, s.baseline_tokens) == (B * G * R, B * G * (P + R), B * base)
    assert ours_ntp_equivalent_tokens(s.total, spec, 2048) == pytest.approx(s.total / (6 * N))
    shared = rlp_step_flops(spec, B, G, P, R, base, shared_prefix_training=True)
    assert shared.training == pytest.approx(B * 6 * N * (P + G * R)) and shared.training < s.training


def test_attention_term_grows_with_context():
    spec = ModelFlopsSpec(N, num_attn_layers=4, attn_dim=128)
    assert ntp_flops_per_token(spec, 4096) > ntp_flops_per_token(spec, 1024) > 6 * N
    for P in (100, 1000):
        s = rlp_step_flops(spec, 2, 4, P, 50, P)
        # prefill once per group + each of G samples decodes 49 cached tokens attending to the growing context
        ref_gen = 2 * (ref_forward(N, 4, 128, 0, P) + 4 * ref_forward(N, 4, 128, P, P + 49))
        assert s.generation == pytest.approx(ref_gen)
        assert s.training == pytest.approx(3 * 2 * 4 * ref_forward(N, 4, 128, 0, P + 50))


def test_from_config_follows_baseline_and_ntp_options():
    spec = ModelFlopsSpec(N)
    cfg = RLPConfig(num_rollouts=4, max_thought_tokens=32, positions_per_document=2, baseline_sees_prompt=True)
    s = rlp_step_flops_from_config(cfg, spec, num_documents=3, context_tokens=100, prompt_tokens=20)
    assert s.generated_tokens == 3 * 2 * 4 * 32
    assert s.baseline == pytest.approx(6 * 2 * N * (100 + 20))
    # The default: the baseline sees the context without the prompt (the talk).
    no_prompt = rlp_step_flops_from_config(
        RLPConfig(num_rollouts=4, max_thought_tokens=32, positions_per_document=2), spec, 3, 100, 20
    )
    assert no_prompt.baseline == pytest.approx(6 * 2 * N * 100)
    thinned = rlp_step_flops_from_config(RLPConfig(baseline_every=4), spec, 3, 100, 20, mean_thought_tokens=10)
    assert thinned.baseline == pytest.approx(3 * 2 * N * 100 / 4)
    assert rlp_step_flops_from_config(RLPConfig(baseline="none"), spec, 3, 100, 20).baseline == 0
    with pytest.raises(ValueError, match="seq_len"):
        rlp_step_flops_from_config(RLPConfig(ntp_loss_weight=0.1), spec, 3, 100, 20)
    mixed = rlp_step_flops_from_config(RLPConfig(ntp_loss_weight=0.1), spec, 3, 100, 20, seq_len=256)
    assert mixed.ntp == pytest.approx(3 * 6 * N * 256)


def test_flop_matched_budget_and_summary():
    spec = ModelFlopsSpec(N)
    step = rlp_step_flops(spec, 512, 16, 2100, 1000, 2048)
    match = flop_matched_ntp_tokens(step, spec, 200, 2048, 16, 512, paper_l_seq=3100, input_tokens=170e6)
    assert match.ours_ntp_tokens == pytest.approx(step.total * 200 / (6 * N))
    # With l_seq = P + R the paper's n·l_seq·bs·iters is exactly our training term (6N per scoring token); ours adds
    # generation (2N per token) and the baseline forward on top, and has no separate T_inp.
    extra = (step.generation + step.baseline) * 200 / (6 * N)
    assert match.ours_ntp_tokens == pytest.approx(match.paper_ntp_tokens - 170e6 + extra)
    # A shared-prefix training forward (P once per group) makes RLP cheaper than the paper's count.
    shared = rlp_step_flops(spec, 512, 16, 2100, 1000, 2048, shared_prefix_training=True)
    cheap = flop_matched_ntp_tokens(shared, spec, 200, 2048, 16, 512, paper_l_seq=3100, input_tokens=170e6)
    assert cheap.ours_ntp_tokens < cheap.paper_ntp_tokens
    text = match.summary()
    assert "ours" in text and "paper" in text and "generation" in text
