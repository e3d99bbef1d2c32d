"""Compute matching for the RLP baselines: the FLOP-matched next-token arm gets as many steps as RLP's FLOPs buy.

FLOPs come from :mod:`nemo_smartpt.rlp.flops` (generation ~2N per generated token after one shared prefill per group,
training ~6N per trained token, baseline ~2N per position); the model size from the Bridge model config.
"""

from __future__ import annotations

import math


def model_flops_spec(model_cfg):
    """Matrix parameters of the decoder and attention width of a Megatron transformer config (dense GPT).

    Attention projections follow the config's heads: Q and the output projection are ``h x heads·kv_channels``,
    K and V ``h x groups·kv_channels`` each (grouped-query attention: groups < heads; Llama 3 8B has 8 KV heads for
    32 query heads, so ``4h²`` would over-count its attention weights by 1.6x). Norms and biases (< 0.1% at real
    widths) are left out, as in the 2N/6N rule.
    """
    from nemo_smartpt.rlp.flops import ModelFlopsSpec

    h, layers = int(model_cfg.hidden_size), int(model_cfg.num_layers)
    heads = int(model_cfg.num_attention_heads)
    kv_channels = int(getattr(model_cfg, "kv_channels", None) or h // heads)
    groups = int(getattr(model_cfg, "num_query_groups", None) or heads)
    query_width = heads * kv_channels
    attention = 2 * h * query_width + 2 * h * groups * kv_channels
    ffn = int(model_cfg.ffn_hidden_size or 4 * h)
    mlp_mult = 3 if getattr(model_cfg, "gated_linear_unit", False) else 2
    num_params = layers * (attention + mlp_mult * h * ffn)
    return ModelFlopsSpec(num_params=float(num_params), num_attn_layers=layers, attn_dim=query_width)


def rlp_compute_match(rlp_cfg, bridge, rlp_steps: int, prompt_tokens: int = 0):
    """The :class:`~nemo_smartpt.rlp.flops.ComputeMatch` of ``rlp_steps`` RLP steps under this Bridge config."""
    from nemo_smartpt.rlp.flops import flop_matched_ntp_tokens, rlp_step_flops_from_config

    spec = model_flops_spec(bridge.model)
    seq = int(bridge.model.seq_length)
    docs = int(bridge.train.global_batch_size)
    context = min(seq, rlp_cfg.max_context) / 2  # a uniformly random target sits mid-sequence on average
    step = rlp_step_flops_from_config(rlp_cfg, spec, docs, context, prompt_tokens, seq_len=seq)
    return flop_matched_ntp_tokens(
        step,
        spec,
        iters=rlp_steps,
        ntp_seq_len=seq,
        num_rollouts=rlp_cfg.num_rollouts,
        batch_size=docs,
        paper_l_seq=context + prompt_tokens + rlp_cfg.max_thought_tokens,
        input_tokens=docs * rlp_steps * context,
    )


def flop_matched_steps(rlp_cfg, bridge, rlp_steps: int, prompt_tokens: int = 0) -> int:
    """Next-token steps with the FLOPs of ``rlp_steps`` RLP steps (our count, not the paper's; both are logged)."""
    match = rlp_compute_match(rlp_cfg, bridge, rlp_steps, prompt_tokens)
    tokens_per_step = int(bridge.train.global_batch_size) * int(bridge.model.seq_length)
    print(f"[smartpt] FLOP-matched baseline: {match.summary()}")
    return max(1, math.ceil(match.ours_ntp_tokens / tokens_per_step))
