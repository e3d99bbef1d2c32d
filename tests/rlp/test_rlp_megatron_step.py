"""The RLP step on the real megatron-core GPTModel, single process: preparation, loss vs a float64 reference,
gradient only through thought tokens, baseline cancellation, the EMA lifecycle and checkpoint, dropout, refusals, SP padding."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
from nemo_smartpt.rlp.megatron.logprobs import vocab_parallel_logprobs
from nemo_smartpt.rlp.megatron.prepare import RLPNoPositionsError, RLPPreparer, pad_prepared_length
from nemo_smartpt.rlp.megatron.step import logprobs_from_logits, rlp_forward, rlp_loss_func

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
    # The per-row layout: full vs chunked logits to fp32 tolerances; the grouped layout (rlp.shared_prefix_forward)
    # equals the per-row one in float64 (test_rlp_shared_prefix.py).
    cfg = _cfg(shared_prefix_forward=False)
    _, batch = _prepare(tiny_gpt, cfg)
    tiny_gpt.zero_grad()
    logits = rlp_forward(batch, tiny_gpt)  # the full-logits reference path
    logits.retain_grad()
    loss_sum, count, metrics = rlp_loss_func(cfg, batch, logprobs_from_logits(cfg, batch, logits))
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
    full_grads = [p.grad.clone() for p in tiny_gpt.parameters()]

    # Logits only at the scored positions, 7 positions per chunk: the same loss, metrics and every gradient.
    chunked = dataclasses.replace(cfg, logits_chunk_tokens=7)
    tiny_gpt.zero_grad()
    logp_NL = rlp_forward(batch, tiny_gpt, chunked)
    assert logp_NL.shape == batch["labels_NL"].shape  # [N, L], no vocabulary axis
    loss2, count2, metrics2 = rlp_loss_func(chunked, batch, logp_NL)
    torch.testing.assert_close(loss2, loss_sum, rtol=1e-5, atol=1e-7)
    assert int(count2) == int(count) and set(metrics2) == set(metrics)
    for key in metrics:
        torch.testing.assert_close(metrics2[key], metrics[key], rtol=1e-5, atol=1e-6, msg=key)
    loss2.backward()
    for p, ref in zip(tiny_gpt.parameters(), full_grads):
        torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-7)


def test_chunked_logprobs_match_float64_log_softmax(single_process_group):
    from nemo_smartpt.rlp.megatron.logits import chunked_logprobs

    gen = torch.Generator().manual_seed(1)
    h = torch.randn(13, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 11, (13,), generator=gen)
    temp = torch.where(torch.arange(13) % 2 == 0, 0.7, 1.0).double()
    got = chunked_logprobs(h, w, labels, temp, chunk=4)  # chunks of 4, 4, 4, 1
    (got * torch.arange(13)).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.log_softmax((h @ w.T) / temp[:, None], -1).gather(-1, labels[:, None])[:, 0]
    (ref * torch.arange(13)).sum().backward()
    # megatron's vocab-parallel cross-entropy computes in fp32: fp32 agreement with the float64 reference.
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-5)


def test_baseline_cancels_from_the_gradient_under_loo(tiny_gpt):
    cfg = _cfg()
    _, batch = _prepare(tiny_gpt, cfg)

    def grads(s_ema):
        tiny_gpt.zero_grad()
        loss, _, metrics = rlp_loss_func(cfg, {**batch, "s_ema_B": s_ema}, rlp_forward(batch, tiny_gpt, cfg))
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
    loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, tiny_gpt, cfg))
    assert torch.isfinite(loss) and "rlp ntp loss" in metrics
    assert metrics["rlp truncation rate"][1] == N  # truncated thoughts are still counted
    padded = pad_prepared_length(batch, 40)
    assert padded["input_ids_NL"].shape[1] == 40 and padded["thought_mask_NL"].sum() == batch["thought_mask_NL"].sum()


def _context(tmp_path, model, step=0, optimizer=None, train_iters=6):
    ckpt = SimpleNamespace(save=str(tmp_path / "ckpt"), load=str(tmp_path / "ckpt"))
    cfg = SimpleNamespace(
        checkpoint=ckpt,
        model=SimpleNamespace(seq_length=32, context_parallel_size=1),
        train=SimpleNamespace(train_iters=train_iters),
    )
    state = SimpleNamespace(cfg=cfg, train_state=SimpleNamespace(step=step))
    return SimpleNamespace(
        state=state, model=[model], skipped_iter=False, loss_dict={}, grad_norm=None, optimizer=optimizer
    )


def test_ema_lifecycle_across_the_switch_and_its_distributed_checkpoint(tiny_gpt, tmp_path):
    from nemo_smartpt.rlp.ema import EMAStateError
    from nemo_smartpt.rlp.megatron.callbacks import PHASE_FILE, build_rlp_training
    from nemo_smartpt.rlp.megatron.ema_checkpoint import ema_checkpoint_dir, has_ema_checkpoint

    # Next-token steps 0 and 1, RLP from step 2 (the smartpt train switch).
    _, (callback,) = build_rlp_training(_cfg(ema_decay=0.9), LAYOUT, EOD, run_dir=str(tmp_path / "run"), start_step=2)
    run = callback.run
    ctx = _context(tmp_path, tiny_gpt)
    callback.on_train_start(ctx)
    assert not run.ema.initialized  # no fp32 shadow during the next-token phase
    callback.on_train_step_start(ctx)
    callback.on_train_step_end(ctx)
    ctx.state.train_state.step = 1
    callback.on_checkpoint_save(ctx)  # a next-token checkpoint carries no EMA
    assert not run.ema.initialized and not has_ema_checkpoint(ctx.state.cfg.checkpoint.save, 1)
    assert not run.last_fresh

    ctx.state.train_state.step = 2  # the first RLP step: φ = θ here, not at step 0
    params = list(tiny_gpt.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(0.25)
    callback.on_train_step_start(ctx)
    assert run.ema.initialized and all(torch.equal(s, p) for s, p in zip(run.ema.shadow, params))
    with torch.no_grad():
        for p in params:
            p.add_(0.5)
    callback.on_train_step_end(ctx)
    assert run.last_fresh and run.ema.num_updates == 1
    torch.testing.assert_close(run.ema.shadow[0], params[0].detach() - 0.45)  # 0.9·θ2 + 0.1·(θ2 + 0.5)
    ctx.state.train_state.step = 3  # Bridge increments after on_train_step_end, then saves iteration 3
    callback.on_checkpoint_save(ctx)
    assert has_ema_checkpoint(ctx.state.cfg.checkpoint.save, 3)
    assert (tmp_path / "ckpt" / PHASE_FILE).exists()

    # Resume at iteration 3: φ, the counters and the RLP start step come back from the distributed checkpoint.
    _, (fresh,) = build_rlp_training(_cfg(), LAYOUT, EOD, start_step=2)
    fresh.on_train_start(ctx)
    assert fresh.run.rlp_start_step == 2 and fresh.run.ema.num_updates == 1 and fresh.run.totals["steps"] == 1
    for a, b in zip(fresh.run.ema.shadow, run.ema.shadow):
        assert torch.equal(a, b)

    # The EMA state missing inside the RLP phase: one line, unless phi may restart from theta.
    import shutil

    shutil.rmtree(ema_checkpoint_dir(ctx.state.cfg.checkpoint.save, 3))
    _, (lost,) = build_rlp_training(_cfg(), LAYOUT, EOD)  # a pure RLP run: the start comes from rlp_phase.json
    with pytest.raises(EMAStateError, match="rlp.ema_from_theta_if_missing"):
        lost.on_train_start(ctx)
    _, (restart,) = build_rlp_training(_cfg(ema_from_theta_if_missing=True), LAYOUT, EOD)
    with pytest.warns(UserWarning, match="restarts from"):
        restart.on_train_start(ctx)
    assert restart.run.rlp_start_step == 2 and not restart.run.ema.initialized
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_dropout_is_off_during_rlp_steps_and_restored_after(single_process_group):
    from nemo_smartpt.rlp.megatron.rollout import dropout_off
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, transformer_config

    spec = TinyGPTSpec(vocab_size=128)
    model = build_tiny_gpt(spec, config=transformer_config(spec, hidden_dropout=0.3, attention_dropout=0.3))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids_NL": ids, "position_ids_NL": torch.arange(12).expand(2, 12)}
    model.eval()
    with torch.no_grad():
        eval_logits = rlp_forward(batch, model)
    model.train()
    with torch.no_grad():
        noisy = rlp_forward(batch, model)
        with dropout_off([model]):
            trained = rlp_forward(batch, model)
        noisy_again = rlp_forward(batch, model)
    assert not torch.allclose(noisy, eval_logits)  # dropout 0.3 in train mode changes the forward...
    torch.testing.assert_close(trained, eval_logits)  # ...the RLP step's train-mode forward is the sampling policy
    assert not torch.allclose(noisy_again, eval_logits)  # and the next-token steps get their dropout back
    assert model.config.hidden_dropout == 0.3 and model.config.attention_dropout == 0.3


def test_refuses_context_parallelism_and_overlapped_param_gather():
    from nemo_smartpt.rlp.megatron.callbacks import RLPUnsupportedError, refuse_unsupported

    def cfg(cp=1, overlap=False):
        return SimpleNamespace(
            model=SimpleNamespace(context_parallel_size=cp),
            ddp=SimpleNamespace(overlap_param_gather=overlap, use_distributed_optimizer=True),
        )

    refuse_unsupported(cfg())
    with pytest.raises(RLPUnsupportedError, match="context_parallel_size=1"):
        refuse_unsupported(cfg(cp=2))
    with pytest.raises(RLPUnsupportedError, match="overlap_param_gather=False"):
        refuse_unsupported(cfg(overlap=True))


def test_baseline_sees_no_prompt_by_default():
    from nemo_smartpt.rlp.prompt import build_baseline_sequence, layout_from_tokenizer

    cfg = RLPConfig()
    assert cfg.baseline_sees_prompt is False  # the talk: the no-think baseline gets the context without the prompt
    layout = layout_from_tokenizer(cfg, lambda text: [len(text) % 100, 7])
    seq = build_baseline_sequence(layout, [40, 41, 42], 43)
    assert list(seq.input_ids)[:3] == [40, 41, 42]
    kept = layout_from_tokenizer(dataclasses.replace(cfg, baseline_sees_prompt=True), lambda t: [len(t) % 100, 7])
    assert list(build_baseline_sequence(kept, [40, 41, 42], 43).input_ids)[:2] == list(kept.prompt_ids)


def test_sequence_parallel_pads_prepared_rows_to_a_multiple_of_tp(tiny_gpt):
    # Under SP the embedding output is split along the sequence over TP ranks, which asserts divisibility by TP.
    cfg = _cfg()
    natural = []
    for step in range(6):
        _, plain = _prepare(tiny_gpt, cfg, step=step)
        tiny_gpt.config.sequence_parallel, tiny_gpt.config.tensor_model_parallel_size = True, 2
        try:
            _, sp = _prepare(tiny_gpt, cfg, step=step)
        finally:
            tiny_gpt.config.sequence_parallel, tiny_gpt.config.tensor_model_parallel_size = False, 1
        L, L_sp = plain["input_ids_NL"].shape[1], sp["input_ids_NL"].shape[1]
        natural.append(L)
        assert L_sp % 2 == 0 and L_sp in (L, L + 1), (L, L_sp)
        assert sp["thought_mask_NL"].sum() == plain["thought_mask_NL"].sum()  # padding is never scored
        assert torch.equal(sp["predict_index_N"], plain["predict_index_N"])
    assert any(L % 2 for L in natural)  # without the padding some of these micro-batches would assert


def test_conf_rlp_yaml_loads_into_the_config():
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).parents[2] / "conf" / "rlp").glob("*.yaml")):
        fields = yaml.safe_load(path.read_text())
        assert set(fields) <= {f.name for f in dataclasses.fields(RLPConfig)}, path
        RLPConfig(**fields).validate()


def test_models_without_the_output_processor_hook_get_the_same_logprobs(tiny_gpt, monkeypatch):
    # megatron-core 0.19's HybridModel has no output_processor hook: the processor then runs in the output layer's call.
    from nemo_smartpt.rlp.megatron import logits

    cfg = _cfg(logits_chunk_tokens=5)
    _, batch = _prepare(tiny_gpt, cfg)
    hooked = rlp_forward(batch, tiny_gpt, cfg)
    monkeypatch.setattr(logits, "supports_output_processor", lambda gpt: False)
    intercepted = rlp_forward(batch, tiny_gpt, cfg)
    torch.testing.assert_close(intercepted, hooked)
    assert "forward" not in vars(tiny_gpt.output_layer)  # the output layer is itself again


def test_scored_positions_can_be_read_from_a_packed_layout(tiny_gpt):
    # A forward over another row order (as the shared-prefix layout packs rows): index_NL maps back, same numbers.
    from nemo_smartpt.rlp.megatron.logits import SelectedLogprobs, forward_with_processor
    from nemo_smartpt.rlp.megatron.logprobs import causal_mask
    from nemo_smartpt.rlp.megatron.step import scored_masks

    cfg = _cfg(logits_chunk_tokens=6)
    _, batch = _prepare(tiny_gpt, cfg)
    N, L = batch["input_ids_NL"].shape
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))  # packed row r holds scoring row perm[r]
    where = torch.empty(N, dtype=torch.long)
    where[perm] = torch.arange(N)
    index_NL = where[:, None] * L + torch.arange(L)[None]
    grad_NL, nograd_NL, temp_NL = scored_masks(batch, cfg)
    processor = SelectedLogprobs(grad_NL, nograd_NL, batch["labels_NL"], temp_NL, 6, index_NL=index_NL)
    packed = forward_with_processor(
        tiny_gpt, tiny_gpt, processor, batch["input_ids_NL"][perm], batch["position_ids_NL"][perm], causal_mask(L)
    )
    torch.testing.assert_close(packed, rlp_forward(batch, tiny_gpt, cfg), rtol=1e-5, atol=1e-6)


def _prefixes(batch, G: int) -> list[list[int]]:
    """Each group's ``P x_<t <think>`` (its first row up to the first ``<think>``): the position it scores."""
    rows = batch["input_ids_NL"][::G].tolist()
    return [row[: row.index(LAYOUT.think_open_ids[0]) + 1] for row in rows]


def test_positions_beyond_the_microbatch_cap_move_to_the_next_microbatch_and_are_dropped_after_the_last(tiny_gpt):
    """``rlp.max_positions_per_microbatch=2`` over a step of two micro-batches that draw 3 positions each: the first
    trains 2 and carries its third to the second, which trains that one first, then 1 of its own, and drops 2."""
    G = 4
    free = RLPPreparer(_cfg(), LAYOUT, EOD, ema=ParamEMA(0.9))
    drawn = [_prefixes(free.prepare(_tokens(), tiny_gpt, step=0, microbatch=m), G) for m in (0, 1)]
    assert [len(d) for d in drawn] == [3, 3]

    capped = RLPPreparer(_cfg(max_positions_per_microbatch=2), LAYOUT, EOD, ema=ParamEMA(0.9))
    first = capped.prepare(_tokens(), tiny_gpt, step=0, microbatch=0, last_microbatch=False)
    assert _prefixes(first, G) == drawn[0][:2]
    assert (capped.stats.carried_positions, capped.stats.dropped_positions) == (1, 0)
    second = capped.prepare(_tokens(), tiny_gpt, step=0, microbatch=1, last_microbatch=True)
    assert _prefixes(second, G) == [drawn[0][2], drawn[1][0]]
    assert (capped.stats.carried_positions, capped.stats.dropped_positions) == (1, 2)
    assert int(first["num_groups"]) == int(second["num_groups"]) == 2
    # A new step starts without leftovers: the cap applies to its own positions only.
    third = capped.prepare(_tokens(), tiny_gpt, step=1, microbatch=0, last_microbatch=True)
    assert int(third["num_groups"]) == 2 and capped.stats.dropped_positions == 3
