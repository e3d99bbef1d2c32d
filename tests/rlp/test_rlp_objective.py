"""RLP objective (eq. 5, 7, 8) against float64 references written here with plain loops, independently of the code."""

import math

import pytest
import torch

from nemo_smartpt.rlp import (
    RLPConfig,
    RLPConfigError,
    UnknownEstimatorError,
    group_advantages,
    info_gain_rewards,
    reduce_metrics,
    rlp_policy_loss,
    rlp_reward_metrics,
)

ESTIMATORS = ("loo", "grpo", "batch")
AGGS = ("seq_mean_token_mean", "token_mean")


# --- independent references -----------------------------------------------------------------------------------------
def ref_advantages(rewards, estimator, valid):
    """rewards, valid: nested lists [B][G]. Returns nested lists of floats."""
    B, G = len(rewards), len(rewards[0])
    out = [[0.0] * G for _ in range(B)]
    if estimator == "batch":
        vals = [rewards[b][g] for b in range(B) for g in range(G) if valid[b][g]]
        if len(vals) < 2:
            return out
        m = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
        for b in range(B):
            for g in range(G):
                if valid[b][g]:
                    out[b][g] = (rewards[b][g] - m) / (sd + 1e-6)
        return out
    for b in range(B):
        idx = [g for g in range(G) if valid[b][g]]
        n = len(idx)
        if n < 2:
            continue
        for g in idx:
            others = [rewards[b][j] for j in idx if j != g]
            if estimator == "loo":
                # Leave-one-out form: r_i minus the mean of the other members (algebraically eq. 7).
                out[b][g] = rewards[b][g] - sum(others) / len(others)
            else:
                m = sum(rewards[b][j] for j in idx) / n
                sd = math.sqrt(sum((rewards[b][j] - m) ** 2 for j in idx) / (n - 1))
                out[b][g] = (rewards[b][g] - m) / (sd + 1e-6)
    return out


def ref_loss(logp, logp_old, adv, mask, eps_low, eps_high, aggregation):
    """Eq. 8 with per-element torch float64 scalars (so autograd gives the reference gradient)."""
    B, G, T = mask.shape
    per_thought, total_tok, n_tok, n_thought = [], 0.0, 0, 0
    for b in range(B):
        for g in range(G):
            terms = []
            for t in range(T):
                if mask[b, g, t]:
                    rho = torch.exp(logp[b, g, t] - float(logp_old[b, g, t]))
                    a = float(adv[b, g])
                    lo, hi = 1 - eps_low, 1 + eps_high
                    r = rho.item()
                    # outside the band the clipped ratio is a constant (no gradient through it)
                    rho_c = rho if lo <= r <= hi else torch.tensor(lo if r < lo else hi, dtype=torch.float64)
                    u, v = rho * a, rho_c * a
                    terms.append(-(u if u.item() <= v.item() else v))
            if terms:
                per_thought.append(sum(terms) / len(terms))
                total_tok = total_tok + sum(terms)
                n_tok += len(terms)
                n_thought += 1
    if aggregation == "seq_mean_token_mean":
        return sum(per_thought) / n_thought
    return total_tok / n_tok


def make_batch(B=3, G=4, T=6, seed=0, ratio_noise=0.3):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, G, T, generator=gen, dtype=torch.float64) * 3
    logp_old = logp + ratio_noise * torch.randn(B, G, T, generator=gen, dtype=torch.float64)
    # ragged thoughts: lengths 0..T, masks as prefixes (one thought empty to exercise the count)
    lens = torch.randint(1, T + 1, (B, G), generator=gen)
    lens[0, 1] = 0
    mask = torch.arange(T)[None, None, :] < lens[..., None]
    adv = torch.randn(B, G, generator=gen, dtype=torch.float64)
    return logp, logp_old, adv, mask


# --- eq. 5 ----------------------------------------------------------------------------------------------------------
def test_info_gain_rewards_matches_reference_and_is_detached():
    s_pred = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    s_ema = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = info_gain_rewards(s_pred, s_ema)
    assert not r.requires_grad and r.shape == (3, 5)
    for b in range(3):
        for g in range(5):
            assert r[b, g].item() == pytest.approx(s_pred[b, g].item() - s_ema[b].item(), abs=1e-12)
    assert torch.equal(info_gain_rewards(s_pred, None), s_pred.detach())
    assert info_gain_rewards(s_pred.bfloat16(), s_ema.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError):
        info_gain_rewards(s_pred, torch.zeros(4))


# --- eq. 7 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("masked", [False, True])
def test_group_advantages_match_reference(estimator, masked):
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    valid = torch.ones(4, 6, dtype=torch.bool)
    if masked:
        valid[0, [1, 4]] = False  # 4 valid
        valid[1, :5] = False  # 1 valid → whole group gets 0
        valid[2, 0] = False
        rewards[0, 1] = float("nan")  # an excluded thought's reward must not leak
    adv = group_advantages(rewards, estimator, valid if masked else None)
    ref = ref_advantages(rewards.tolist(), estimator, valid.tolist())
    assert torch.allclose(adv.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    assert torch.isfinite(adv).all()
    if masked:
        assert (adv[~valid] == 0).all()
        if estimator != "batch":  # a single valid member has no group baseline; "batch" uses the batch's
            assert (adv[1] == 0).all()


def test_loo_is_eq7_scaled_mean_centering():
    r = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    mean = r.mean()
    assert torch.allclose(group_advantages(r, "loo"), 4 / 3 * (r - mean))
    assert torch.allclose(group_advantages(r, "loo").sum(), torch.tensor(0.0), atol=1e-6)


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(UnknownEstimatorError, match="loo"):
        group_advantages(torch.zeros(2, 3), "rloo_typo")


# --- eq. 8 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", AGGS)
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.1, 0.28)])
def test_policy_loss_and_grad_match_reference(aggregation, eps_low, eps_high):
    logp, logp_old, adv, mask = make_batch()
    x = logp.clone().requires_grad_(True)
    loss_sum, count, _ = rlp_policy_loss(x, logp_old, adv, mask, eps_low, eps_high, aggregation)
    (loss_sum / count).backward()

    x_ref = logp.clone().requires_grad_(True)
    ref = ref_loss(x_ref, logp_old, adv, mask, eps_low, eps_high, aggregation)
    ref.backward()
    assert (loss_sum / count).item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-12)
    expected_count = int((mask.sum(-1) > 0).sum()) if aggregation == "seq_mean_token_mean" else int(mask.sum())
    assert int(count) == expected_count


def test_ratio_one_gives_plain_policy_gradient():
    # One update per batch: logp_old = logp.detach(), so ρ = 1, clipping is inert, grad = −A/|c| per token.
    logp, _, adv, mask = make_batch(ratio_noise=0.0)
    x = logp.clone().requires_grad_(True)
    loss_sum, count, metrics = rlp_policy_loss(x, x.detach(), adv, mask)
    loss_sum.backward()
    lens = mask.sum(-1, keepdim=True).clamp(min=1)
    assert torch.allclose(x.grad, -adv[..., None] * mask / lens)
    assert metrics["rlp clip fraction"][0] == 0


def test_clipping_is_asymmetric():
    # one thought per case, one token each; eps_low=0.1, eps_high=0.3
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.2], dtype=torch.float64)
    advs = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    logp_old = torch.zeros(1, 5, 1, dtype=torch.float64)
    x = torch.log(ratios).reshape(1, 5, 1).requires_grad_(True)
    mask = torch.ones(1, 5, 1, dtype=torch.bool)
    loss_sum, count, metrics = rlp_policy_loss(x, logp_old, advs[None], mask, eps_low=0.1, eps_high=0.3)
    loss_sum.backward()
    # token losses: A>0,ρ=1.5 → clip at 1.3; A<0,ρ=1.5 → unclipped 1.5; A>0,ρ=.5 → unclipped; A<0,ρ=.5 → clip at .9;
    # A>0, ρ=1.2 inside the upper band (would be clipped at eps 0.2 but not at 0.3)
    expected = [-1.3, 1.5, -0.5, 0.9, -1.2]
    assert loss_sum.item() == pytest.approx(sum(expected))
    grad = x.grad.reshape(-1)
    assert grad[0] == 0 and grad[3] == 0  # clipped branches carry no gradient
    assert grad[1] == pytest.approx(1.5) and grad[2] == pytest.approx(-0.5) and grad[4] == pytest.approx(-1.2)
    assert metrics["rlp clip fraction"].tolist() == [2.0, 5.0]
    assert metrics["rlp clip fraction high"].tolist() == [1.0, 5.0]
    assert metrics["rlp clip fraction low"].tolist() == [1.0, 5.0]


@pytest.mark.parametrize("aggregation", AGGS)
def test_only_thought_tokens_receive_gradient(aggregation):
    B, G, T, V = 2, 3, 7, 11
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(B, G, T, V, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, G, T), generator=gen)
    mask = torch.zeros(B, G, T, dtype=torch.bool)
    mask[:, :, 2:5] = True  # prompt/context before, </think> (forced) + target after
    mask[1, 2, :] = False  # an excluded thought
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    adv = torch.tensor([[0.5, -1.0, 2.0], [1.0, -0.3, 7.0]], dtype=torch.float64)
    loss_sum, count, _ = rlp_policy_loss(logp, logp.detach(), adv, mask, aggregation=aggregation)
    (loss_sum / count).backward()
    per_pos = logits.grad.abs().sum(-1)
    assert (per_pos[~mask] == 0).all()
    assert (per_pos[mask] > 0).all()


@pytest.mark.parametrize("aggregation", AGGS)
def test_micro_batching_equals_one_big_batch(aggregation):
    logp, logp_old, adv, mask = make_batch(B=5, G=4, T=8, seed=7)
    big = logp.clone().requires_grad_(True)
    ls, c, _ = rlp_policy_loss(big, logp_old, adv, mask, aggregation=aggregation)
    (ls / c).backward()

    # Uneven micro-batches, Megatron's calculate_per_token_loss convention: Σ loss_sum backward, grads / Σ count.
    small = logp.clone().requires_grad_(True)
    total_sum, total_count, naive = 0.0, 0, []
    for lo, hi in [(0, 1), (1, 4), (4, 5)]:
        s, n, _ = rlp_policy_loss(small[lo:hi], logp_old[lo:hi], adv[lo:hi], mask[lo:hi], aggregation=aggregation)
        s.backward()
        total_sum, total_count = total_sum + s.detach(), total_count + int(n)
        naive.append((s / n).item())
    small.grad /= total_count
    assert (total_sum / total_count).item() == pytest.approx((ls / c).item(), rel=1e-12)
    assert torch.allclose(small.grad, big.grad, atol=1e-14)
    # The mean of micro-batch means is NOT the same (this is why a sum and a count are returned).
    assert sum(naive) / len(naive) != pytest.approx((ls / c).item(), rel=1e-6)

    # With the global count known up front, the pre-normalised shares sum to the big-batch loss.
    shares = [
        rlp_policy_loss(
            logp[lo:hi], logp_old[lo:hi], adv[lo:hi], mask[lo:hi], aggregation=aggregation, num_thoughts_global=c
        )[0].item()
        for lo, hi in [(0, 2), (2, 5)]
    ]
    assert sum(shares) == pytest.approx((ls / c).item(), rel=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_baseline_cancels_only_under_group_estimators(estimator):
    gen = torch.Generator().manual_seed(11)
    B, G, T = 4, 5, 6
    s_pred = -torch.rand(B, G, generator=gen, dtype=torch.float64) * 4
    ema_a = -torch.rand(B, generator=gen, dtype=torch.float64) * 4
    ema_b = ema_a + torch.tensor([3.0, -2.0, 0.5, 7.0], dtype=torch.float64)  # a different per-group constant
    logp = -torch.rand(B, G, T, generator=gen, dtype=torch.float64)
    mask = torch.ones(B, G, T, dtype=torch.bool)

    def grad_for(s_ema):
        adv = group_advantages(info_gain_rewards(s_pred, s_ema), estimator)
        x = logp.clone().requires_grad_(True)
        s, n, _ = rlp_policy_loss(x, x.detach(), adv, mask)
        (s / n).backward()
        return adv, x.grad

    adv_a, grad_a = grad_for(ema_a)
    adv_b, grad_b = grad_for(ema_b)
    adv_none, grad_none = grad_for(None)
    if estimator in ("loo", "grpo"):
        assert torch.allclose(adv_a, adv_b, atol=1e-5) and torch.allclose(adv_a, adv_none, atol=1e-5)
        assert torch.allclose(grad_a, grad_b, atol=1e-7)
        assert RLPConfig(estimator=estimator).baseline_affects_gradient() is False
    else:
        assert not torch.allclose(adv_a, adv_b, atol=1e-3)
        assert not torch.allclose(grad_a, grad_b, atol=1e-5)
        assert RLPConfig(estimator=estimator).baseline_affects_gradient() is True


def test_excluded_truncated_thoughts_leave_loss_and_baseline():
    rewards = torch.tensor([[1.0, 2.0, 100.0, 3.0]])
    valid = torch.tensor([[True, True, False, True]])
    adv = group_advantages(rewards, "loo", valid)
    assert torch.allclose(adv, torch.tensor([[-1.5, 0.0, 0.0, 1.5]]))  # 3/2 · (r − 2) over the valid three
    logp = torch.zeros(1, 4, 3, requires_grad=True)
    mask = torch.ones(1, 4, 3, dtype=torch.bool) & valid[..., None]
    s, n, m = rlp_policy_loss(logp, logp.detach(), adv, mask)
    s.backward()
    assert int(n) == 3 and (logp.grad[0, 2] == 0).all()
    rm = rlp_reward_metrics(rewards, torch.zeros(1), valid, truncated_BG=~valid, thought_len_BG=torch.full((1, 4), 3))
    assert rm["rlp truncation rate"].tolist() == [1.0, 4.0]  # counted even though excluded
    assert rm["rlp reward mean"].tolist() == [6.0, 3.0]


def test_kl_term_matches_reference():
    logp, logp_old, adv, mask = make_batch(seed=5)
    ref_lp = logp + 0.1
    x = logp.clone().requires_grad_(True)
    s, n, m = rlp_policy_loss(x, logp_old, adv, mask, kl_beta=0.01, logp_ref_BGT=ref_lp, aggregation="token_mean")
    base = ref_loss(logp.clone(), logp_old, adv, mask, 0.2, 0.2, "token_mean")
    kl = [math.exp(0.1) - 0.1 - 1 for _ in range(int(mask.sum()))]
    assert (s / n).item() == pytest.approx(base.item() + 0.01 * sum(kl) / len(kl), rel=1e-9)
    assert m["rlp kl_ref"][0] / m["rlp kl_ref"][1] == pytest.approx(math.exp(0.1) - 1.1, rel=1e-6)
    with pytest.raises(ValueError, match="logp_ref"):
        rlp_policy_loss(x, logp_old, adv, mask, kl_beta=0.01)


def test_metrics_follow_bridge_reporting_convention():
    logp, logp_old, adv, mask = make_batch(seed=2)
    parts = [rlp_policy_loss(logp[i : i + 1], logp_old[i : i + 1], adv[i : i + 1], mask[i : i + 1]) for i in range(3)]
    keys = set(parts[0][2])
    for _s, _n, m in parts:
        assert set(m) == keys  # Bridge takes the keys of the first micro-batch
        assert all(v.shape == (2,) and not v.requires_grad for v in m.values())
    reduced = reduce_metrics([p[2] for p in parts])
    s, n, _ = rlp_policy_loss(logp, logp_old, adv, mask)
    assert reduced["rlp loss"] == pytest.approx((s / n).item(), rel=1e-6)
    ratio = torch.exp(logp - logp_old)[mask]
    assert reduced["rlp ratio mean"] == pytest.approx(ratio.mean().item(), rel=1e-6)
    assert reduced["rlp approx kl"] == pytest.approx((ratio - 1 - ratio.log()).mean().item(), rel=1e-6)
    assert reduced["rlp advantage std"] == pytest.approx(adv[mask.any(-1)].pow(2).mean().sqrt().item(), rel=1e-6)


def test_shape_errors_are_specific():
    with pytest.raises(ValueError, match="same"):
        rlp_policy_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="aggregation"):
        rlp_policy_loss(
            torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.ones(1, 2, 3), aggregation="x"
        )


# --- config ---------------------------------------------------------------------------------------------------------
def test_config_defaults_are_the_papers_and_validate():
    cfg = RLPConfig().validate()
    assert (cfg.num_rollouts, cfg.max_thought_tokens, cfg.temperature, cfg.ema_decay) == (16, 2048, 0.7, 0.999)
    assert (cfg.estimator, cfg.aggregation, cfg.kl_beta, cfg.ntp_loss_weight) == ("loo", "seq_mean_token_mean", 0, 0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_rollouts", 1),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("ema_decay", 1.0),
        ("baseline", "frozen"),
        ("estimator", "ppo"),
        ("aggregation", "sum"),
        ("eps_low", 1.0),
        ("max_context", 4),
        ("truncation", "drop"),
        ("ntp_loss_weight", -1.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(RLPConfigError) as err:
        RLPConfig(min_context=8, **{field: value}).validate()
    assert err.value.field == field


def test_config_rejects_stale_baseline_when_it_reaches_the_gradient():
    RLPConfig(baseline_every=4, estimator="loo").validate()
    with pytest.raises(RLPConfigError) as err:
        RLPConfig(baseline_every=4, estimator="batch").validate()
    assert err.value.field == "baseline_every"
    cfg = RLPConfig(baseline_every=3)
    assert [cfg.computes_baseline_at(s) for s in range(4)] == [True, False, False, True]


def test_bf16_logprobs_get_fp32_surrogate_and_bf16_grad():
    logp, logp_old, adv, mask = make_batch(seed=4)
    x = logp.bfloat16().requires_grad_(True)
    s, n, _ = rlp_policy_loss(x, logp_old.bfloat16(), adv.float(), mask)
    assert s.dtype == torch.float32
    (s / n).backward()
    assert x.grad.dtype == torch.bfloat16 and (x.grad[~mask] == 0).all()


def test_rlp_package_imports_no_megatron():
    import subprocess
    import sys

    code = "import sys, nemo_smartpt.rlp; print(any(m.startswith('megatron') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_garbage_in_masked_slots_does_not_leak():
    logp, logp_old, adv, mask = make_batch(seed=6)
    dirty = logp.clone()
    dirty[~mask] = float("-inf")  # e.g. log-probs of padding
    dirty_old = logp_old.clone()
    dirty_old[~mask] = float("nan")
    x, y = dirty.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    s1, n1, m1 = rlp_policy_loss(x, dirty_old, adv, mask)
    s2, n2, _ = rlp_policy_loss(y, logp_old, adv, mask)
    s1.backward()
    s2.backward()
    assert torch.isfinite(s1) and s1.item() == pytest.approx(s2.item()) and int(n1) == int(n2)
    assert torch.isfinite(x.grad).all() and torch.allclose(x.grad, y.grad)
    assert all(torch.isfinite(v).all() for v in m1.values())
