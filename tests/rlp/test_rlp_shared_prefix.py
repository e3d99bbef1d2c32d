"""rlp.shared_prefix_forward: the grouped layout (each context once, G thoughts attending to it) gives the loss,
every reported metric and every gradient of the per-row layout, in float64, on megatron-core's GPTModel with learned
absolute positions and with RoPE + grouped-query attention; combinations it cannot honour fail in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nemo_smartpt.rlp import ParamEMA, RLPConfig, ThoughtLayout
from nemo_smartpt.rlp.megatron.prepare import RLPPreparer, pad_prepared_length
from nemo_smartpt.rlp.megatron.step import rlp_forward, rlp_loss_func
from nemo_smartpt.rlp.shared_prefix import region_positions, shared_prefix_batch, to_row_layout

EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)


def _cfg(**kw):
    base = dict(num_rollouts=4, max_thought_tokens=6, min_context=3, max_context=10, seed=5, temperature=0.7)
    base.update(kw)
    return RLPConfig(**base).validate()


def _tokens():
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(1, 119, (2, 18), generator=gen)
    body[0, 9] = EOD
    body[1, 13] = EOD
    return body


def _per_row(batch):
    return {k: v for k, v in batch.items() if not k.startswith("sp_")}


def _loss_and_grads(model, cfg, batch):
    model.zero_grad(set_to_none=True)
    loss, count, metrics = rlp_loss_func(cfg, batch, rlp_forward(batch, model, cfg))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.detach(), count, {k: v.detach() for k, v in metrics.items()}, grads


def _assert_same(model, cfg, batch, rtol=1e-10, atol=1e-12):
    grouped = _loss_and_grads(model, cfg, batch)
    per_row = _loss_and_grads(model, cfg, _per_row(batch))
    torch.testing.assert_close(grouped[0], per_row[0], rtol=rtol, atol=atol)
    assert int(grouped[1]) == int(per_row[1])
    assert set(grouped[2]) == set(per_row[2])
    for key in per_row[2]:
        torch.testing.assert_close(grouped[2][key], per_row[2][key], rtol=rtol, atol=atol, msg=key)
    nonzero = 0
    for name, g in per_row[3].items():
        torch.testing.assert_close(grouped[3][name], g, rtol=rtol, atol=atol, msg=name)
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > len(per_row[3]) // 2  # the comparison is not between zero gradients
    return grouped


def test_layout_round_trips_rows_and_positions():
    G, B = 3, 2
    prefix = torch.tensor([4, 6])
    lengths = torch.tensor([5, 9, 7, 8, 6, 10, 12])  # B·G scoring rows, then one next-token row of 12
    L = 12
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (B * G + 1, L), generator=gen)
    for b in range(B):
        ids[b * G : (b + 1) * G, : prefix[b]] = ids[b * G, : prefix[b]]
    out = shared_prefix_batch(ids, G, prefix, lengths, pad_id=0, length_multiple=4)
    S = out["sp_input_ids_RS"].shape[1]
    P, R = int(out["sp_layout_R4"][0, 0]), int(out["sp_layout_R4"][0, 2])
    assert S % 4 == 0 and S == P + G * R and R == 5 and P >= 12  # the next-token row sets the prefix region
    back = to_row_layout(out["sp_input_ids_RS"], out["sp_index_NL"])
    pos = to_row_layout(out["sp_position_ids_RS"], out["sp_index_NL"])
    real = torch.arange(L)[None] < lengths[:, None]
    assert torch.equal(back[real], ids[real])
    assert torch.equal(pos[real], torch.arange(L).expand_as(ids)[real])  # positions restart after each prefix
    slot_real = to_row_layout(region_positions(out["sp_layout_R4"]), out["sp_index_NL"])
    assert torch.equal(slot_real[real], pos[real])  # the header alone reproduces every real position (RoPE)
    # One packed row per group plus the next-token row: the context is stored once, not G times.
    assert out["sp_input_ids_RS"].shape[0] == B + 1
    suffix_tokens = int((lengths[: B * G] - prefix.repeat_interleave(G)).sum())
    assert int((out["sp_input_ids_RS"] != 0).sum()) == int(prefix.sum()) + suffix_tokens + 12
    ids[1, 0] += 1
    with pytest.raises(ValueError, match="does not share the prefix"):
        shared_prefix_batch(ids, G, prefix, lengths)


@pytest.fixture
def tiny_gpt64(tiny_gpt):
    return tiny_gpt.double()


def _prepare(model, cfg, tokens=None, **kw):
    prep = RLPPreparer(cfg, dataclasses.replace(LAYOUT, truncation=cfg.truncation), EOD, ema=ParamEMA(0.9))
    return prep.prepare(_tokens() if tokens is None else tokens, model, step=0, **kw)


def test_grouped_forward_equals_per_row_float64_learned_positions(tiny_gpt64):
    cfg = _cfg()
    batch = _prepare(tiny_gpt64, cfg)
    assert batch["sp_input_ids_RS"].shape[0] == int(batch["num_groups"])  # one packed row per group
    grouped = _assert_same(tiny_gpt64, cfg, batch)
    assert torch.isfinite(grouped[2]["rlp reward mean"]).all()
    with torch.no_grad():  # the reference path (cfg None): full logits, gathered back to the per-row layout
        real = batch["input_ids_NL"] != LAYOUT.pad_id
        got, want = rlp_forward(batch, tiny_gpt64), rlp_forward(_per_row(batch), tiny_gpt64)
        torch.testing.assert_close(got[real], want[real], rtol=1e-10, atol=1e-12)
    # Padded as pipeline parallelism pads prepared batches: still equal.
    _assert_same(tiny_gpt64, cfg, pad_prepared_length(batch, batch["input_ids_NL"].shape[1] + 3))


def test_grouped_forward_equals_per_row_with_exclude_and_next_token_rows(tiny_gpt64):
    cfg = _cfg(truncation="exclude", ntp_loss_weight=0.5, max_thought_tokens=3)
    tokens = _tokens()
    batch = _prepare(tiny_gpt64, cfg, tokens, ntp_labels_bS=torch.roll(tokens, -1, 1))
    assert batch["sp_input_ids_RS"].shape[0] == int(batch["num_groups"]) + tokens.shape[0]
    grouped = _assert_same(tiny_gpt64, cfg, batch)
    assert "rlp ntp loss" in grouped[2]


def _rope_gpt():
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt

    # RoPE and grouped-query attention (2 KV heads for 4 query heads), with the rest of the Llama shape.
    return build_tiny_gpt(TinyGPTSpec(num_layers=2, hidden_size=32, seq_length=64, family="llama")).double()


def test_grouped_forward_equals_per_row_float64_rope_gqa(single_process_group):
    model = _rope_gpt()
    cfg = _cfg()
    batch = _prepare(model, cfg)
    _assert_same(model, cfg, batch)
    assert model.position_embedding_type == "rope"  # restored after the grouped forward


def test_grouped_forward_is_the_default_and_cheaper(tiny_gpt):
    cfg = _cfg(num_rollouts=8)
    assert RLPConfig().shared_prefix_forward
    batch = _prepare(tiny_gpt, cfg)
    per_row_tokens = batch["input_ids_NL"].numel()
    grouped_tokens = batch["sp_input_ids_RS"].numel()
    assert grouped_tokens < per_row_tokens
    off = _prepare(tiny_gpt, dataclasses.replace(cfg, shared_prefix_forward=False))
    assert not any(k.startswith("sp_") for k in off)
    assert torch.equal(off["input_ids_NL"], batch["input_ids_NL"])  # same rollouts either way


def test_unsupported_combinations_fail_in_one_line(tiny_gpt):
    from nemo_smartpt.rlp.megatron.shared_attention import SharedPrefixUnsupportedError, check_grouped_support

    check_grouped_support(tiny_gpt)
    config = tiny_gpt.config
    for field, value, words in (
        ("context_parallel_size", 2, "context_parallel_size=2"),
        ("window_size", (8, 0), "sliding-window"),
        ("softmax_type", "learnable", "softmax_type"),
    ):
        saved = getattr(config, field)
        setattr(config, field, value)
        try:
            with pytest.raises(SharedPrefixUnsupportedError, match=words) as err:
                check_grouped_support(tiny_gpt)
        finally:
            setattr(config, field, saved)
        assert "\n" not in str(err.value) and "rlp.shared_prefix_forward=false" in str(err.value)
    layer = tiny_gpt.decoder.layers[1].self_attention
    saved = layer.core_attention
    layer.core_attention = torch.nn.Identity()  # what a Mamba mixer or an unknown attention looks like here
    try:
        with pytest.raises(SharedPrefixUnsupportedError, match="layer 1"):
            check_grouped_support(tiny_gpt)
    finally:
        layer.core_attention = saved


def test_rollouts_and_plain_forwards_unchanged_after_install(tiny_gpt):
    from nemo_smartpt.rlp.megatron.logprobs import logits_shard
    from nemo_smartpt.rlp.megatron.shared_attention import install_grouped_attention

    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = logits_shard(tiny_gpt, ids)
        install_grouped_attention(tiny_gpt)
        after = logits_shard(tiny_gpt, ids)
    assert torch.equal(before, after)  # a boolean mask still takes megatron's own attention
