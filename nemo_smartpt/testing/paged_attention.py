"""Reference paged-attention kernels so megatron-core's dynamic inference engine runs on a CPU (tests only).

megatron-core's ``DynamicInferenceEngine`` calls flash-attn's paged kernels (``flash_attn_varlen_func`` with a
``block_table`` for prefill, ``flash_attn_with_kvcache`` for decode) and a Triton kernel to append keys/values to the
paged cache. None of them exist on a CPU machine, so the engine's integration (request handling, prefix caching,
stop words, sampling, our sampler on top) could not be tested there. :func:`install_reference_paged_attention`
replaces exactly those three entry points with plain PyTorch: the KV append falls back to megatron-core's own
indexing path (``triton_append_key_value_cache = None``), and attention becomes a float32 softmax over each
sequence's keys gathered block by block from the paged cache, causal with the queries aligned to the end of the
keys, which is flash-attn's convention for ``seqlen_q < seqlen_k``.

This is a mock of a kernel that cannot run here, never a stand-in users meet: on a GPU the real kernels run and
:func:`install_reference_paged_attention` is not called (it refuses to run when CUDA is available).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _gather_paged(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` positions of one sequence from ``cache [num_blocks, block_size, heads, dim]``."""
    block_size = cache.shape[1]
    used = (length + block_size - 1) // block_size
    return cache[blocks[:used].long()].reshape(used * block_size, *cache.shape[2:])[:length]


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``q [Sq, Hq, D]`` over ``k, v [Sk, Hk, D]``; query i sits at key position ``Sk − Sq + i``; GQA by repetition."""
    sq, hq, _ = q.shape
    sk, hk, _ = k.shape
    if hq != hk:
        k = k.repeat_interleave(hq // hk, dim=1)
        v = v.repeat_interleave(hq // hk, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    query_pos = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    scores = scores.masked_fill(torch.arange(sk, device=q.device)[None, :] > query_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def _check_unsupported(window_size, want_lse: bool) -> None:
    if tuple(window_size) != (-1, -1) or want_lse:
        raise NotImplementedError("the reference paged attention covers full causal attention without sinks")


def reference_varlen_attention(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    causal=True,
    window_size=(-1, -1),
    block_table=None,
    return_attn_probs=False,
    **_,
):
    """flash-attn ``flash_attn_varlen_func`` over a paged cache: ``q [total_q, H, D]``, ``k/v`` paged."""
    _check_unsupported(window_size, return_attn_probs)
    if not causal or block_table is None:
        raise NotImplementedError("the reference varlen attention covers the paged causal prefill only")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    for i in range(cu_seqlens_q.numel() - 1):
        start, end = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        if end == start:
            continue
        length = int(cu_seqlens_k[i + 1] - cu_seqlens_k[i])
        keys = _gather_paged(k, block_table[i], length)
        values = _gather_paged(v, block_table[i], length)
        out[start:end] = _causal_attention(q[start:end], keys, values, scale)
    return out


def reference_attention_with_kvcache(
    q,
    k_cache,
    v_cache,
    cache_seqlens,
    softmax_scale=None,
    causal=True,
    window_size=(-1, -1),
    block_table=None,
    return_softmax_lse=False,
    **_,
):
    """flash-attn ``flash_attn_with_kvcache`` (decode): ``q [B, Sq, H, D]`` against each row's paged cache."""
    _check_unsupported(window_size, return_softmax_lse)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.zeros_like(q)
    for i in range(q.shape[0]):
        length = int(cache_seqlens[i])
        if length == 0:
            continue
        keys = _gather_paged(k_cache, block_table[i], length)
        values = _gather_paged(v_cache, block_table[i], length)
        out[i] = _causal_attention(q[i], keys, values, scale)
    return out


@contextlib.contextmanager
def install_reference_paged_attention() -> Iterator[None]:
    """Route megatron-core's dynamic-batching attention through the reference kernels while inside (CPU only)."""
    if torch.cuda.is_available():
        raise RuntimeError("a CUDA device is present: the dynamic engine must use the real flash-attn kernels")
    from megatron.core.inference.contexts import dynamic_context
    from megatron.core.transformer import attention

    saved = (
        attention.flash_attn_varlen_func,
        attention.flash_attn_with_kvcache,
        attention.is_fa_min_version,
        dynamic_context.triton_append_key_value_cache,
    )
    attention.flash_attn_varlen_func = reference_varlen_attention
    attention.flash_attn_with_kvcache = reference_attention_with_kvcache
    attention.is_fa_min_version = lambda *args, **kwargs: True  # the engine asserts flash-attn >= 2.7.3
    dynamic_context.triton_append_key_value_cache = None  # megatron-core's own indexing fallback
    try:
        yield
    finally:
        (
            attention.flash_attn_varlen_func,
            attention.flash_attn_with_kvcache,
            attention.is_fa_min_version,
            dynamic_context.triton_append_key_value_cache,
        ) = saved
