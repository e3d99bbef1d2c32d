"""The shared-prefix training forward on megatron-core: grouped attention inside the real ``GPTModel``.

``rlp.shared_prefix_forward`` (:mod:`nemo_smartpt.rlp.shared_prefix` for the layout) runs the model once over the
packed micro-batch ``[rows, P + G·R]``. Everything but attention is position-wise, so only the core attention and the
rotary embedding need to know the layout:

- **Core attention.** :func:`install_grouped_attention` gives each layer's core attention module (megatron's local
  ``DotProductAttention`` or Transformer Engine's ``TEDotProductAttention``) a forward that recognises the layout
  header passed as ``attention_mask`` (an integer ``[rows, 4]`` tensor ``P, G, R, p``; a real mask is boolean or
  None and goes to the module's own forward unchanged, so rollouts and next-token steps are untouched). The header
  travels as the mask argument, so activation recomputation (selective or full) re-enters the same path, and under
  pipeline parallelism every stage's forward step builds it from its own copy of the prepared batch.
- **Attention maths** (Prefix Grouper, arXiv 2506.05433): prefix queries attend causally to the prefix; suffix queries
  of thought i attend to the real prefix keys (< p) and causally to their own suffix, with ONE softmax over both
  blocks. CPU and the local spec: explicit score blocks ``[rows, heads, P, P]``, ``[rows, heads, G, R, P]`` and
  ``[rows, heads, G, R, R]`` (never the G-times-copied prefix keys). GPU with flash-attn: prefix with
  ``flash_attn_func(causal=True)``; suffixes with ``flash_attn_varlen_func`` over keys ``[prefix_b ; suffix_i]`` and
  ``causal=True``, which flash-attn aligns bottom-right when queries are fewer than keys — exactly "the whole prefix,
  then causal within the thought".
- **RoPE.** Positions restart at p for every suffix, which one ``[S, 1, 1, d]`` table cannot express, so during the
  grouped forward the model skips its own rotary step and the grouped attention rotates q and k itself with the
  table gathered at :func:`~nemo_smartpt.rlp.shared_prefix.region_positions` (the unfused megatron rotation, the same
  arithmetic as the per-row path; fused RoPE kernels take only one position table). Learned absolute positions go
  in through the embedding's ``position_ids``.

Combinations the grouped forward cannot honour fail in one line before step 1 (:func:`check_grouped_support`):
context parallelism (splits the packed sequence across ranks), Mamba / hybrid or multi-latent attention layers,
sliding-window attention, non-vanilla softmax, position types other than learned absolute / RoPE / none, and
Transformer Engine attention without flash-attn. Sequence parallelism works: the packed length is padded to a
multiple of the TP size, and attention sees the full sequence after megatron's all-gather anyway.
"""

from __future__ import annotations

import contextlib
import types

import torch

from nemo_smartpt.rlp.shared_prefix import layout_header, region_positions, to_row_layout

_MASKED = -10000.0
"""The fill megatron's ``attention_mask_func`` uses; exp underflows to exactly 0 in fp32 and fp64."""


class SharedPrefixUnsupportedError(ValueError):
    """``rlp.shared_prefix_forward`` cannot honour this model or parallel layout."""

    def __init__(self, what: str):
        super().__init__(f"rlp.shared_prefix_forward: {what}; set rlp.shared_prefix_forward=false")


def _core_attention_types() -> tuple[type, ...]:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    types_ = [DotProductAttention]
    try:
        from megatron.core.extensions.transformer_engine import TEDotProductAttention

        if isinstance(TEDotProductAttention, type):  # the CPU runtime stands a mock in for Transformer Engine
            types_.append(TEDotProductAttention)
    except ImportError:  # Transformer Engine is optional (absent on CPU)
        pass
    return tuple(types_)


def _is_te(module) -> bool:
    return "TEDotProductAttention" in {c.__name__ for c in type(module).__mro__}


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def check_grouped_support(model) -> None:
    """Raise :class:`SharedPrefixUnsupportedError` (one line) if the grouped forward cannot run on ``model``."""
    from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

    chunks = model if isinstance(model, (list, tuple)) else [model]
    for chunk in chunks:
        gpt = unwrap_model(chunk)
        cfg = gpt.config
        if getattr(cfg, "context_parallel_size", 1) > 1:
            raise SharedPrefixUnsupportedError(
                f"context_parallel_size={cfg.context_parallel_size} would split the packed group across ranks"
            )
        kind = getattr(gpt, "position_embedding_type", "learned_absolute")
        if kind not in ("learned_absolute", "rope", "none"):
            raise SharedPrefixUnsupportedError(f"position_embedding_type={kind!r} (supported: learned_absolute, rope)")
        if getattr(cfg, "multi_latent_attention", False):
            raise SharedPrefixUnsupportedError("multi-latent attention layers are not supported")
        if getattr(cfg, "window_size", None) is not None:
            raise SharedPrefixUnsupportedError(f"sliding-window attention (window_size={cfg.window_size})")
        if getattr(cfg, "softmax_type", "vanilla") != "vanilla":
            raise SharedPrefixUnsupportedError(f"softmax_type={cfg.softmax_type!r} (only vanilla)")
        decoder = getattr(gpt, "decoder", None)
        layers = list(getattr(decoder, "layers", []))
        core = _core_attention_types()
        for i, layer in enumerate(layers):
            if _position_wise(layer):
                continue  # an MLP/MoE layer of a hybrid stack: per token, the grouped layout changes nothing for it
            attn = getattr(getattr(layer, "self_attention", None), "core_attention", None)
            if not isinstance(attn, core):
                name = type(getattr(layer, "mixer", None) or getattr(layer, "self_attention", layer)).__name__
                raise SharedPrefixUnsupportedError(
                    f"layer {i} ({name}) is not dot-product self-attention (Mamba / hybrid layers scan the whole "
                    "packed sequence)"
                )
            if _is_te(attn) and not _flash_attn_available():
                raise SharedPrefixUnsupportedError(
                    "Transformer Engine attention needs flash-attn for the grouped path"
                )


def _position_wise(layer) -> bool:
    """A layer without token mixing: no self-attention module (megatron's IdentityOp) and no Mamba mixer."""
    from megatron.core.transformer.identity_op import IdentityOp

    return isinstance(getattr(layer, "self_attention", None), IdentityOp) and getattr(layer, "mixer", None) is None


def install_grouped_attention(gpt) -> None:
    """Give every core attention module of ``gpt`` the grouped path (idempotent; normal masks are unaffected)."""
    if getattr(gpt, "_rlp_grouped_attention", False):
        return
    check_grouped_support(gpt)
    rope = gpt.rotary_pos_emb if getattr(gpt, "position_embedding_type", None) == "rope" else None
    for module in gpt.modules():
        if isinstance(module, _core_attention_types()) and not hasattr(module, "_rlp_plain_forward"):
            module._rlp_plain_forward = module.forward
            module._rlp_rope = rope
            module.forward = types.MethodType(_dispatch_forward, module)
    gpt._rlp_grouped_attention = True


def _dispatch_forward(self, query, key, value, attention_mask, *args, **kwargs):
    if attention_mask is None or attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
        return self._rlp_plain_forward(query, key, value, attention_mask, *args, **kwargs)
    return grouped_core_attention(self, query, key, value, attention_mask)


def _rotate(t: torch.Tensor, freqs_SR1D: torch.Tensor, config) -> torch.Tensor:
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    return _apply_rotary_pos_emb_bshd(t, freqs_SR1D.to(t.device), rotary_interleaved=config.rotary_interleaved)


def grouped_core_attention(module, query, key, value, layout_R4: torch.Tensor) -> torch.Tensor:
    """Grouped attention of one layer: ``query [S, rows, np, hn]``, ``key/value [S, rows, ng, hn]`` →
    ``[S, rows, np·hn]`` (megatron's core-attention contract)."""
    P, G, R = layout_header(layout_R4)
    S, rows, heads, dim = query.shape
    if S != P + G * R:
        raise ValueError(f"grouped attention got a sequence of {S}, the layout says {P} + {G}·{R}")
    rope = module._rlp_rope
    if rope is not None:
        positions_RS = region_positions(layout_R4).to(query.device)
        table_Dd = rope.get_emb(int(positions_RS.max()) + 1)[:, 0, 0, :]
        freqs_SR1D = table_Dd[positions_RS].transpose(0, 1)[:, :, None, :]
        query, key = _rotate(query, freqs_SR1D, module.config), _rotate(key, freqs_SR1D, module.config)
    if heads != key.shape[2]:  # grouped-query attention: repeat kv heads as megatron's DotProductAttention does
        key = key.repeat_interleave(heads // key.shape[2], dim=2)
        value = value.repeat_interleave(heads // value.shape[2], dim=2)
    scale = module.softmax_scale
    coeff = getattr(getattr(module, "scale_mask_softmax", None), "scale", None)
    if coeff is not None:
        scale = scale * coeff
    if query.is_cuda and _flash_attn_available():
        out = _flash_grouped(query, key, value, layout_R4, P, G, R, scale, module)
    else:
        out = _torch_grouped(query, key, value, layout_R4, P, G, R, scale, module)
    return out.reshape(S, rows, heads * dim)


def _dropout(module, probs: torch.Tensor) -> torch.Tensor:
    dropout = getattr(module, "attention_dropout", None)
    if dropout is None or not module.training or dropout.p == 0:
        return probs
    from megatron.core import tensor_parallel

    ctx = (
        contextlib.nullcontext() if module.config.sequence_parallel else tensor_parallel.get_cuda_rng_tracker().fork()
    )
    with ctx:
        return dropout(probs)


def _torch_grouped(query, key, value, layout_R4, P, G, R, scale, module) -> torch.Tensor:
    """Explicit score blocks (CPU, local spec): one softmax over [prefix keys | own suffix keys] per suffix query."""
    S, rows, heads, dim = query.shape
    dev = query.device
    half = query.dtype in (torch.float16, torch.bfloat16)
    work = torch.float32 if half else query.dtype
    q_p, k_p, v_p = query[:P], key[:P], value[:P]
    q_s = query[P:].view(G, R, rows, heads, dim)
    k_s = key[P:].view(G, R, rows, heads, dim)
    v_s = value[P:].view(G, R, rows, heads, dim)

    # Prefix: causal self-attention [rows, heads, P, P] (prefix padding sits after every real token).
    s_pp = torch.einsum("sbnh,tbnh->bnst", q_p, k_p).to(work) * scale
    causal_PP = torch.triu(torch.ones(P, P, dtype=torch.bool, device=dev), diagonal=1)
    probs_pp = _dropout(module, torch.softmax(s_pp.masked_fill(causal_PP, _MASKED), dim=-1).to(query.dtype))
    out_p = torch.einsum("bnst,tbnh->sbnh", probs_pp, v_p)

    # Suffixes: [rows, heads, G, R, P] against the prefix (real keys only) and [rows, heads, G, R, R] causal.
    s_sp = torch.einsum("gjbnh,tbnh->bngjt", q_s, k_p).to(work) * scale
    pad_RP = torch.arange(P, device=dev)[None, :] >= layout_R4[:, 3:4].to(dev)
    s_sp = s_sp.masked_fill(pad_RP[:, None, None, None, :], _MASKED)
    s_ss = torch.einsum("gjbnh,gkbnh->bngjk", q_s, k_s).to(work) * scale
    s_ss = s_ss.masked_fill(torch.triu(torch.ones(R, R, dtype=torch.bool, device=dev), diagonal=1), _MASKED)
    probs = _dropout(module, torch.softmax(torch.cat([s_sp, s_ss], dim=-1), dim=-1).to(query.dtype))
    out_s = torch.einsum("bngjt,tbnh->gjbnh", probs[..., :P], v_p) + torch.einsum(
        "bngjk,gkbnh->gjbnh", probs[..., P:], v_s
    )
    return torch.cat([out_p, out_s.reshape(G * R, rows, heads, dim)], dim=0)


def _flash_grouped(query, key, value, layout_R4, P, G, R, scale, module) -> torch.Tensor:  # pragma: no cover - GPU
    """flash-attn route: causal prefix; suffixes varlen over ``[prefix_b ; suffix_i]`` with bottom-right causal."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    S, rows, heads, dim = query.shape
    dev = query.device
    p_drop = module.attention_dropout.p if module.training else 0.0
    # Prefix block: [rows, P, heads, dim]; padding after the real prefix is never attended to by real tokens.
    bq = query.transpose(0, 1)
    bk, bv = key.transpose(0, 1), value.transpose(0, 1)
    out_p = flash_attn_func(bq[:, :P], bk[:, :P], bv[:, :P], p_drop, softmax_scale=scale, causal=True)
    # Suffix block: sequence (row b, thought i) has queries suffix_i (R slots) and keys prefix_b (p_b) + suffix_i.
    prefix_R = layout_R4[:, 3].to(dev)
    flat_k = bk.reshape(rows * S, heads, dim)
    flat_v = bv.reshape(rows * S, heads, dim)
    row_of = torch.arange(rows, device=dev).repeat_interleave(G)
    thought_of = torch.arange(G, device=dev).repeat(rows)
    kv_len = prefix_R[row_of] + R
    cu_k = torch.nn.functional.pad(kv_len.cumsum(0), (1, 0)).to(torch.int32)
    seq_of = torch.arange(rows * G, device=dev).repeat_interleave(kv_len)
    within = torch.arange(int(cu_k[-1]), device=dev) - cu_k[:-1].long()[seq_of]
    p_of = prefix_R[row_of][seq_of]
    slot = torch.where(within < p_of, within, P + thought_of[seq_of] * R + (within - p_of))
    kv_index = row_of[seq_of] * S + slot
    q_s = bq[:, P:].reshape(rows, G, R, heads, dim).reshape(rows * G * R, heads, dim)
    cu_q = torch.arange(0, rows * G * R + 1, R, device=dev, dtype=torch.int32)
    out_s = flash_attn_varlen_func(
        q_s,
        flat_k[kv_index],
        flat_v[kv_index],
        cu_q,
        cu_k,
        R,
        int(kv_len.max()),
        p_drop,
        softmax_scale=scale,
        causal=True,
    )
    out_s = out_s.view(rows, G * R, heads, dim)
    return torch.cat([out_p, out_s], dim=1).transpose(0, 1)


@contextlib.contextmanager
def _own_rotary(gpt):
    """The model skips its [S, 1, 1, d] rotary step while the grouped attention applies per-slot positions."""
    if getattr(gpt, "position_embedding_type", None) != "rope":
        yield
        return
    gpt.position_embedding_type = "none"
    try:
        yield
    finally:
        gpt.position_embedding_type = "rope"


def shared_prefix_forward(batch: dict[str, torch.Tensor], model, processor=None) -> torch.Tensor:
    """The training forward over the grouped layout.

    With ``processor`` (the step's :class:`~nemo_smartpt.rlp.megatron.logits.SelectedLogprobs`, built with
    ``index_NL=sp_index_NL``) the last stage returns the scored log-probs ``[rows, L]`` of the per-row layout, read
    from the packed hidden states; without it, full logits gathered to the per-row layout ``[rows, L, V/tp]`` (the
    reference path). Other pipeline stages return their packed hidden states.
    """
    from nemo_smartpt.rlp.megatron.logits import forward_with_processor
    from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

    gpt = unwrap_model(model)
    install_grouped_attention(gpt)
    if gpt.config.pipeline_model_parallel_size > 1 and not gpt.config.variable_seq_lengths:
        # Packed micro-batches differ in length; fixed p2p buffers would receive the wrong shape.
        raise SharedPrefixUnsupportedError(
            "pipeline parallelism needs variable_seq_lengths=True for packed micro-batches (pretrain() sets it)"
        )
    args = (batch["sp_input_ids_RS"], batch["sp_position_ids_RS"], batch["sp_layout_R4"])
    with _own_rotary(gpt):
        if processor is not None:
            return forward_with_processor(model, gpt, processor, *args)
        out = model(*args)
    if not getattr(gpt, "post_process", True):
        return out
    return to_row_layout(out, batch["sp_index_NL"])


def flops_ratio(prefix_len: float, thought_len: float, num_rollouts: int, hidden: int, layers: int, vocab: int):
    """Model FLOPs of one group's training forward as executed, ``(per-row, grouped)``: linear layers 24·h² per token
    per layer, attention 4·h per query-key pair per layer (dense score blocks), and the output layer 2·h·V at the
    scored positions only (thought tokens and the target, the same G·(R + 1) in both layouts)."""
    from nemo_smartpt.rlp.shared_prefix import grouped_attention_pairs, grouped_token_counts

    tok = grouped_token_counts(prefix_len, thought_len, num_rollouts)
    pairs = grouped_attention_pairs(prefix_len, thought_len, num_rollouts)
    scored = num_rollouts * (thought_len + 1)
    return tuple(
        layers * (24 * hidden * hidden * t + 4 * hidden * a) + 2 * hidden * vocab * scored for t, a in zip(tok, pairs)
    )


__all__ = [
    "SharedPrefixUnsupportedError",
    "check_grouped_support",
    "flops_ratio",
    "grouped_core_attention",
    "install_grouped_attention",
    "shared_prefix_forward",
]
