"""The RLP step on the real megatron-core GPTModel, single process: preparation, loss vs a float64 reference,
gradient only through thought tokens, baseline cancellation, EMA side files."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
from nemo_smartpt.rlp.megatron.logprobs import vocab_parallel_logprobs
from nemo_smartpt.rlp.megatron.prepare import RLPNoPositionsError, RLPPreparer, pad_prepared_length
from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func

EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)


def _cfg(**kw):
    base = dict(num_rollouts=4, max_thought_tokens=5, min_context=3, max_context=10, seed=5, temperature=0.7)
    base.update(kw)
    return RLPConfig(**base).validate()


def _tokens():
    # Two packed rows: documents of 9, 6 and 13 tokens (EOD-separated) and one too short to use.
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(1, 119, (2, 16), generator=gen)
    body[0, 9] = EOD
    body[1, 13] = EOD
    body[1, 15] = EOD
    return body


def _prepare(model, cfg, step=0, ema=None):
    prep = RLPPreparer(cfg, dataclasses.replace(LAYOUT, truncation=cfg.truncation), EOD, ema=ema or ParamEMA(0.9))
    return prep, prep.prepare(_tokens(), model, step=step)


def test_vocab_parallel_logprobs_match_log_softmax(single_process_group):
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, labels[..., None])[..., 0]
    got = vocab_parallel_logprobs(logits, labels, 0.7)
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)
    assert logits.isfinite().all()  # the input was not modified in place


def test_prepare_builds_groups_with_one_prefill_each(tiny_gpt):
    cfg = _cfg()
    prep, batch = _prepare(tiny_gpt, cfg)
    B = int(batch["num_groups"])
    assert B == prep.stats.positions == 3 and prep.stats.skipped_documents == 1
    assert prep.counters.prefills == B  # the context is prefilled once per group, not per rollout
    N, L = batch["input_ids_NL"].shape
    assert N == B * cfg.num_rollouts and batch["s_ema_B"].shape == (B,) and bool(batch["has_s_ema"])
    # Thought tokens: 1..5 per row, right after <think>; the predict position holds x_t as its label.
    lengths = batch["thought_mask_NL"].sum(1)
    assert ((lengths >= 1) & (lengths <= cfg.max_thought_tokens)).all()
    assert (lengths == batch["thought_len_N"]).all()
    rows = torch.arange(N)
    assert not batch["thought_mask_NL"][rows, batch["predict_index_N"]].any()
    # Same seed, same step → same batch; another step → other rollouts.
    _, again = _prepare(tiny_gpt, cfg)
    assert torch.equal(again["input_ids_NL"], batch["input_ids_NL"])
    _, other = _prepare(tiny_gpt, cfg, step=1)
    assert not torch.equal(other["input_ids_NL"], batch["input_ids_NL"])


def test_baseline_every_and_no_positions(tiny_gpt):
    cfg = _cfg(baseline_every=2)
    prep, batch = _prepare(tiny_gpt, cfg, step=1)
    assert not bool(batch["has_s_ema"]) and prep.stats.baseline_forwards == 0
    with pytest.raises(RLPNoPositionsError):
        RLPPreparer(cfg, LAYOUT, EOD, ema=ParamEMA()).prepare(torch.full((1, 8), EOD), tiny_gpt, step=0)


def _reference_loss(batch, logits, cfg):
    """Eq. 5/7/8 in float64 from the full softmax (TP=1), written independently of the objective module."""
    logits = logits.double()
    B = int(batch["num_groups"])
    N, L = batch["labels_NL"].shape
    G = N // B
    logp = torch.log_softmax(logits / cfg.temperature, -1).gather(-1, batch["labels_NL"][..., None])[..., 0]
    lp1 = torch.log_softmax(logits, -1).gather(-1, batch["labels_NL"][..., None])[..., 0]
    s_pred = lp1[torch.arange(N), batch["predict_index_N"]].view(B, G)
    r = s_pred - batch["s_ema_B"].double()[:, None]
    adv = G / (G - 1) * (r - r.mean(1, keepdim=True))
    mask = batch["thought_mask_NL"].double()
    ratio = torch.exp(logp - logp.detach())
    per_thought = -(ratio * adv.reshape(N, 1) * mask).sum(1) / mask.sum(1)
    return per_thought.sum(), N


def test_loss_matches_float64_reference_and_only_thoughts_get_gradient(tiny_gpt):
    cfg = _cfg()
    _, batch = _prepare(tiny_gpt, cfg)
    tiny_gpt.zero_grad()
    logits = rlp_forward(batch, tiny_gpt)
    logits.retain_grad()
    loss_sum, count, metrics = rlp_loss_func(cfg, batch, logits)
    ref_sum, ref_count = _reference_loss(batch, logits.detach(), cfg)
    assert int(count) == ref_count
    torch.testing.assert_close(loss_sum.double(), ref_sum, rtol=1e-4, atol=1e-6)
    loss_sum.backward()
    grad_pos = logits.grad.abs().sum(-1) > 0  # [N, L]: positions whose logits receive gradient
    assert torch.equal(grad_pos, batch["thought_mask_NL"] & grad_pos)  # nothing outside thought tokens
    assert grad_pos.any()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_gpt.parameters())
    for key in ("rlp reward mean", "rlp s_pred mean", "rlp s_ema mean", "rlp truncation rate", "rlp clip fraction"):
        assert torch.isfinite(metrics[key]).all(), key


def test_baseline_cancels_from_the_gradient_under_loo(tiny_gpt):
    cfg = _cfg()
    _, batch = _prepare(tiny_gpt, cfg)

    def grads(s_ema):
        tiny_gpt.zero_grad()
        loss, _, metrics = rlp_loss_func(cfg, {**batch, "s_ema_B": s_ema}, rlp_forward(batch, tiny_gpt))
        loss.backward()
        return [p.grad.clone() for p in tiny_gpt.parameters()], float(metrics["rlp reward mean"][0])

    g1, r1 = grads(batch["s_ema_B"])
    g2, r2 = grads(batch["s_ema_B"] + torch.tensor([5.0, -3.0, 1.0]))
    assert r1 != r2  # the logged reward changes...
    for a, b in zip(g1, g2):  # ...the gradient does not (eq. 7: S_ema is shared by the whole group)
        torch.testing.assert_close(a, b)


def test_exclude_truncated_and_mixed_ntp(tiny_gpt):
    cfg = _cfg(truncation="exclude", ntp_loss_weight=0.5, max_thought_tokens=2)
    prep = RLPPreparer(cfg, dataclasses.replace(LAYOUT, truncation="exclude"), EOD, ema=ParamEMA())
    tokens = _tokens()
    batch = prep.prepare(tokens, tiny_gpt, step=0, ntp_labels_bS=torch.roll(tokens, -1, 1))
    N = batch["predict_index_N"].shape[0]
    assert batch["input_ids_NL"].shape[0] == N + 2
    truncated = batch["truncated_N"]
    assert not batch["thought_mask_NL"][:N][truncated].any()  # excluded thoughts get no gradient
    loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, tiny_gpt))
    assert torch.isfinite(loss) and "rlp ntp loss" in metrics
    assert metrics["rlp truncation rate"][1] == N  # truncated thoughts are still counted
    padded = pad_prepared_length(batch, 40)
    assert padded["input_ids_NL"].shape[1] == 40 and padded["thought_mask_NL"].sum() == batch["thought_mask_NL"].sum()


def test_ema_checkpoint_side_file_round_trip(tiny_gpt, tmp_path):
    from nemo_smartpt.rlp.megatron.callbacks import build_rlp_training, ema_side_file

    _, (callback,) = build_rlp_training(_cfg(ema_decay=0.9), LAYOUT, EOD, run_dir=str(tmp_path / "run"))
    run = callback.run
    ckpt = SimpleNamespace(save=str(tmp_path / "ckpt"), load=str(tmp_path / "ckpt"))
    state = SimpleNamespace(cfg=SimpleNamespace(checkpoint=ckpt, model=SimpleNamespace(seq_length=32)))
    state.train_state = SimpleNamespace(step=0)
    ctx = SimpleNamespace(state=state, model=[tiny_gpt], skipped_iter=False, loss_dict={})
    callback.on_train_start(ctx)
    params = list(tiny_gpt.parameters())
    assert all(torch.equal(s, p) for s, p in zip(run.ema.shadow, params))  # φ = θ at the start
    with torch.no_grad():
        for p in params:
            p.add_(0.5)
    callback.on_train_step_start(ctx)
    callback.on_train_step_end(ctx)
    state.train_state.step = 1  # Bridge increments after on_train_step_end, then saves iteration 1
    assert run.ema.num_updates == 1
    # φ ← 0.9·θ0 + 0.1·(θ0 + 0.5) = (θ0 + 0.5) − 0.45
    torch.testing.assert_close(run.ema.shadow[0], params[0].detach() - 0.45)
    callback.on_checkpoint_save(ctx)
    assert ema_side_file(ckpt.save, 1).exists()
    _, (fresh,) = build_rlp_training(_cfg(), LAYOUT, EOD)
    fresh.on_train_start(ctx)
    assert fresh.run.ema.num_updates == 1 and fresh.run.totals["steps"] == 1
    for a, b in zip(fresh.run.ema.shadow, run.ema.shadow):
        assert torch.equal(a, b)
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_conf_rlp_yaml_loads_into_the_config():
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).parents[2] / "conf" / "rlp").glob("*.yaml")):
        fields = yaml.safe_load(path.read_text())
        assert set(fields) <= {f.name for f in dataclasses.fields(RLPConfig)}, path
        RLPConfig(**fields).validate()
