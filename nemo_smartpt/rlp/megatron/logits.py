"""Log-probabilities only where RLP needs them: hidden states gathered before the output layer, logits in chunks.

The loss needs log π(c_u) at thought tokens, S_pred at one target per row, and (mixed objective only) the next-token
log-probs of document rows; the baseline needs one target per position. A plain forward would build logits for every
position of every row, ``[N·L, V]`` (at the paper's shapes ~1.3 TB per micro-batch of B=8 positions in fp32). Here the
model's final hidden states are gathered at the needed positions *before* the output layer, and the vocab-parallel
log-softmax runs over chunks of at most ``chunk`` positions:

    h_P = hidden[positions]                      [P, H]   (P = needed positions; all-gathered first under SP)
    z_c = h_c · W_shardᵀ                          [chunk, V/tp], one chunk at a time
    logp_c = −vocab_parallel_cross_entropy(z_c / T_c, labels_c)

Each chunk runs under activation checkpointing, so its ``[chunk, V/tp]`` logits (and the softmax the cross-entropy
keeps for backward) exist once at a time, in the forward and again in the backward. The TP communication is the
output layer's own: without SP the gathered hidden states enter with ``copy_to_tensor_model_parallel_region``
(all-reduce of their gradient), under SP the sequence all-gather's backward reduce-scatters it; the vocabulary is
never gathered. The numbers equal the full-logits path (tests: float64 reference, TP=2 against TP=1).

It plugs into megatron-core's ``GPTModel.forward(..., output_processor=...)`` hook, which hands over the final hidden
states ``[S, N, H]`` (sequence-split under SP), the output layer and its (possibly tied) weight. Models without that
hook (megatron-core 0.19's ``HybridModel``) get the same processor through their output layer's call
(:func:`forward_with_processor`).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_logprobs(h_CH, weight_VH, labels_C, temperature_C, tp_group, scale_logits):
    from megatron.core import tensor_parallel

    z_CV = F.linear(h_CH, weight_VH)
    if scale_logits is not None:
        z_CV = scale_logits(z_CV)
    # fp32 (megatron's vocab-parallel cross-entropy computes in fp32 anyway); the division makes a fresh tensor,
    # which vocab_parallel_cross_entropy modifies in place.
    dtype = torch.promote_types(z_CV.dtype, torch.float32)
    scaled_CV = z_CV.to(dtype) / temperature_C.to(dtype)[:, None]
    return -tensor_parallel.vocab_parallel_cross_entropy(scaled_CV, labels_C, tp_group=tp_group)


def chunked_logprobs(
    h_PH: torch.Tensor,
    weight_VH: torch.Tensor,
    labels_P: torch.Tensor,
    temperature_P: torch.Tensor,
    chunk: int,
    tp_group=None,
    scale_logits=None,
) -> torch.Tensor:
    """log softmax(h·Wᵀ / T)[label] for ``P`` positions, ``chunk`` positions at a time, vocab-parallel.

    ``h_PH`` must already be the output layer's TP input (identical on every TP rank, with the TP gradient
    reduction attached: see :func:`gather_positions`). Each chunk is recomputed in backward when gradients flow.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = []
    grad = torch.is_grad_enabled() and (h_PH.requires_grad or weight_VH.requires_grad)
    for lo in range(0, h_PH.shape[0], chunk):
        args = (h_PH[lo : lo + chunk], weight_VH, labels_P[lo : lo + chunk], temperature_P[lo : lo + chunk])
        if grad:
            out.append(
                checkpoint(
                    _chunk_logprobs, *args, tp_group, scale_logits, use_reentrant=False, preserve_rng_state=False
                )
            )
        else:
            out.append(_chunk_logprobs(*args, tp_group, scale_logits))
    if not out:
        return h_PH.new_zeros(0, dtype=torch.promote_types(h_PH.dtype, torch.float32))
    return torch.cat(out)


def gather_positions(
    hidden_SNH: torch.Tensor,
    rows_P: torch.Tensor,
    cols_P: torch.Tensor,
    sequence_parallel: bool,
    tp_group=None,
    packed: bool = False,
) -> torch.Tensor:
    """``hidden[col, row]`` for each position, as the output layer's TP input (see the module docstring).

    ``packed``: ``rows_P`` holds flat indices ``row·S + position`` into the model's ``[S, R, H]`` output instead (a
    packed layout such as the shared-prefix forward's, whose rows are not the scoring rows); ``cols_P`` is ignored.
    """
    from megatron.core import tensor_parallel

    if sequence_parallel:
        hidden_SNH = tensor_parallel.gather_from_sequence_parallel_region(
            hidden_SNH, tensor_parallel_output_grad=True, group=tp_group
        )
    if packed:
        S = hidden_SNH.shape[0]
        rows_P, cols_P = rows_P // S, rows_P % S
    picked = hidden_SNH[cols_P, rows_P]
    return (
        picked if sequence_parallel else tensor_parallel.copy_to_tensor_model_parallel_region(picked, group=tp_group)
    )


def output_weight_of(output_layer, tied_weight):
    """The output layer's weight shard (the embedding's when tied); a bias is refused (GPT output layers have none)."""
    if getattr(output_layer, "bias", None) is not None:
        raise NotImplementedError("RLP's chunked log-probs assume an output layer without bias")
    return tied_weight if tied_weight is not None else output_layer.weight


class SelectedLogprobs:
    """``GPTModel`` output processor: ``[N, L]`` fp32 log-probs at the requested positions, zeros elsewhere.

    Args:
        grad_mask_NL: positions whose log-prob carries gradient (thought tokens, next-token rows).
        nograd_mask_NL: positions scored without gradient (the S_pred targets; the baseline's targets).
        labels_NL: the label at every position.
        temperature_NL: the temperature per position (the sampling T on thought tokens, 1 elsewhere).
        chunk: positions per logits chunk (``rlp.logits_chunk_tokens``).
        index_NL: where each ``[N, L]`` position sits in the model's output when the forward ran over another
            (packed) layout: flat ``row·S + position`` (the shared-prefix layout's ``sp_index_NL``); None: the same.
    """

    def __init__(self, grad_mask_NL, nograd_mask_NL, labels_NL, temperature_NL, chunk: int, index_NL=None):
        self.index_NL = index_NL
        self.grad_mask_NL = grad_mask_NL.bool()
        self.nograd_mask_NL = nograd_mask_NL.bool() & ~self.grad_mask_NL
        self.labels_NL = labels_NL
        self.temperature_NL = temperature_NL
        self.chunk = int(chunk)

    def __call__(self, hidden_states, output_layer, output_weight: torch.Tensor | None = None, **kwargs):
        from megatron.core import parallel_state

        weight_VH = output_weight_of(output_layer, output_weight)
        sp = bool(getattr(output_layer, "sequence_parallel", False))
        tp_group = getattr(output_layer, "tp_group", None) or parallel_state.get_tensor_model_parallel_group()
        scale = kwargs.get("scale_logits")
        config = kwargs.get("config")
        if config is not None and not getattr(config, "use_mup", False):
            scale = None
        N, L = self.labels_NL.shape
        out = torch.zeros(N * L, dtype=torch.float32, device=hidden_states.device)
        for mask, grad in ((self.grad_mask_NL, True), (self.nograd_mask_NL, False)):
            rows_P, cols_P = mask.nonzero(as_tuple=True)
            if rows_P.numel() == 0:
                continue
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                if self.index_NL is None:
                    h_PH = gather_positions(hidden_states, rows_P, cols_P, sp, tp_group)
                else:
                    h_PH = gather_positions(hidden_states, self.index_NL[rows_P, cols_P], None, sp, tp_group, True)
                logp_P = chunked_logprobs(
                    h_PH,
                    weight_VH,
                    self.labels_NL[rows_P, cols_P],
                    self.temperature_NL[rows_P, cols_P],
                    self.chunk,
                    tp_group,
                    scale,
                )
            out = out.index_put((rows_P * L + cols_P,), logp_P.float())
        return out.view(N, L)


def supports_output_processor(gpt) -> bool:
    """Whether the (unwrapped) model's forward takes megatron-core's ``output_processor`` hook."""
    return "output_processor" in inspect.signature(type(gpt).forward).parameters


@contextlib.contextmanager
def _intercepted_output_layer(gpt, processor):
    """The output layer returns ``processor``'s ``[N, L]`` result (transposed, as the model transposes its logits)."""
    layer = gpt.output_layer

    def forward(hidden_states, weight=None, runtime_gather_output=None, **kwargs):
        out_NL = processor(hidden_states=hidden_states, output_layer=layer, output_weight=weight)
        return out_NL.transpose(0, 1), None

    layer.forward = forward
    try:
        yield
    finally:
        del layer.forward


def forward_with_processor(model, gpt, processor, *args, **kwargs):
    """``model(*args, output_processor=processor)``; for models without the hook, through their output layer.

    ``model`` is what to call (possibly wrapped, or a stage-forward function's target), ``gpt`` its unwrapped module.
    """
    if supports_output_processor(gpt):
        return model(*args, output_processor=processor, **kwargs)
    if not getattr(gpt, "post_process", True) or getattr(gpt, "output_layer", None) is None:
        return model(*args, **kwargs)  # a pipeline stage without the output layer returns hidden states anyway
    with _intercepted_output_layer(gpt, processor):
        return model(*args, **kwargs)
