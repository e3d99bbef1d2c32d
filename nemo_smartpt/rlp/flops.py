"""FLOP accounting of an RLP step, and the next-token-prediction (NTP) token budget it is worth. Pure Python.

Costs per token at sequence position ``p`` (0-based) of a model with N (non-embedding) parameters, ``n_attn``
attention layers and query width ``d_attn``: a forward is ``2N + 4·n_attn·d_attn·(p + 1)`` (matmuls + QKᵀ and AV over
``p + 1`` keys); forward + backward is 3× that (≈ 6N). Set ``num_attn_layers=0`` to drop the attention term (then
the NTP-token equivalent is exactly total FLOPs / 6N).

One RLP step, per target position (group of G thoughts of R tokens each, rollout prefix of P_r tokens)::

    generation  prefill P_r once per group (KV cache shared by the G samples) + G·(R − 1) cached decode forwards
    training    forward + backward of G scoring sequences of P_r + R tokens (or P_r once + G·R, shared prefix)
    baseline    one forward of the no-thought sequence per position, on 1/baseline_every of the steps
    ntp         forward + backward of the documents when ntp_loss_weight > 0

The paper (arXiv 2510.01265) instead charges T_flop = n · l_seq · bs · iters + T_inp NTP tokens, i.e. one generated
token = one trained token. We print both: ours converts total FLOPs at the NTP cost per token.
"""

from __future__ import annotations

import dataclasses

from nemo_smartpt.rlp.config import RLPConfig


@dataclasses.dataclass(frozen=True)
class ModelFlopsSpec:
    """What FLOP counting needs to know about the model."""

    num_params: float
    """N, non-embedding parameters (the 2N/6N rule)."""
    num_attn_layers: int = 0
    """Attention layers (for a hybrid Mamba model only its attention layers; 0 drops the attention term)."""
    attn_dim: int = 0
    """Query width = heads × head_dim."""


def forward_flops(spec: ModelFlopsSpec, start: int, end: int) -> float:
    """Forward FLOPs of tokens at positions ``[start, end)`` given a cache of the earlier ones."""
    if end <= start:
        return 0.0
    # Σ_{p=start}^{end-1} (p + 1) keys attended, in closed form.
    keys = (end * (end + 1) - start * (start + 1)) / 2
    return 2.0 * spec.num_params * (end - start) + 4.0 * spec.num_attn_layers * spec.attn_dim * keys


def ntp_flops_per_token(spec: ModelFlopsSpec, seq_len: int) -> float:
    """Training FLOPs per token of an NTP step on ``seq_len``-token sequences (6N + attention)."""
    return 3.0 * forward_flops(spec, 0, seq_len) / seq_len


@dataclasses.dataclass(frozen=True)
class RLPStepFlops:
    """FLOPs and token counts of one RLP step, split by phase."""

    generation: float
    training: float
    baseline: float
    ntp: float
    generated_tokens: float
    trained_tokens: float
    baseline_tokens: float

    @property
    def total(self) -> float:
        return self.generation + self.training + self.baseline + self.ntp


def rlp_step_flops(
    spec: ModelFlopsSpec,
    num_positions: int,
    num_rollouts: int,
    rollout_prefix_tokens: float,
    thought_tokens: float,
    baseline_tokens: float,
    baseline_fraction: float = 1.0,
    shared_prefix_training: bool = False,
    ntp_sequences: int = 0,
    ntp_seq_len: int = 0,
) -> RLPStepFlops:
    """FLOPs of one RLP step.

    Args:
        spec: the model.
        num_positions: target positions in the step (B; = documents × positions_per_document).
        num_rollouts: G.
        rollout_prefix_tokens: P_r = prompt + context + ``<think>`` tokens (mean over positions).
        thought_tokens: R, generated tokens per thought including ``</think>`` (mean; forced closes included).
        baseline_tokens: length of the no-thought input (context, plus the prompt if the baseline sees it).
        baseline_fraction: share of steps that run the baseline forward (1 / baseline_every; 0 for none).
        shared_prefix_training: whether the training forward encodes the prefix once per group.
        ntp_sequences: sequences of an NTP loss in the same step (mixed objective), each ``ntp_seq_len`` long.
    """
    B, G, P, R = num_positions, num_rollouts, rollout_prefix_tokens, thought_tokens
    # Token positions are fractional when means are passed; the closed forms stay valid as polynomials.
    prefill = forward_flops(spec, 0, P)
    decode = forward_flops(spec, P, P + max(R - 1, 0))
    generation = B * (prefill + G * decode)
    if shared_prefix_training:
        training = 3.0 * B * (prefill + G * forward_flops(spec, P, P + R))
        trained_tokens = B * (P + G * R)
    else:
        training = 3.0 * B * G * forward_flops(spec, 0, P + R)
        trained_tokens = B * G * (P + R)
    baseline = baseline_fraction * B * forward_flops(spec, 0, baseline_tokens)
    ntp = 3.0 * ntp_sequences * forward_flops(spec, 0, ntp_seq_len)
    return RLPStepFlops(
        generation=generation,
        training=training,
        baseline=baseline,
        ntp=ntp,
        generated_tokens=B * G * R,
        trained_tokens=trained_tokens,
        baseline_tokens=baseline_fraction * B * baseline_tokens,
    )


def rlp_step_flops_from_config(
    cfg: RLPConfig,
    spec: ModelFlopsSpec,
    num_documents: int,
    context_tokens: float,
    prompt_tokens: int,
    think_open_tokens: int = 1,
    mean_thought_tokens: float | None = None,
    shared_prefix_training: bool = False,
    seq_len: int | None = None,
) -> RLPStepFlops:
    """:func:`rlp_step_flops` for an :class:`RLPConfig`; ``mean_thought_tokens`` defaults to the limit (upper bound).

    ``seq_len`` (the packed-sample length) is needed only when ``cfg.ntp_loss_weight > 0``.
    """
    R = cfg.max_thought_tokens if mean_thought_tokens is None else mean_thought_tokens
    baseline_fraction = 0.0 if cfg.baseline == "none" else 1.0 / cfg.baseline_every
    if cfg.ntp_loss_weight > 0 and seq_len is None:
        raise ValueError("seq_len is needed to count the NTP loss FLOPs when ntp_loss_weight > 0")
    return rlp_step_flops(
        spec,
        num_positions=num_documents * cfg.positions_per_document,
        num_rollouts=cfg.num_rollouts,
        rollout_prefix_tokens=prompt_tokens + context_tokens + think_open_tokens,
        thought_tokens=R,
        baseline_tokens=context_tokens + (prompt_tokens if cfg.baseline_sees_prompt else 0),
        baseline_fraction=baseline_fraction,
        shared_prefix_training=shared_prefix_training,
        ntp_sequences=num_documents if cfg.ntp_loss_weight > 0 else 0,
        ntp_seq_len=seq_len or 0,
    )


def paper_ntp_equivalent_tokens(
    num_rollouts: int, l_seq: float, batch_size: int, iters: int, input_tokens: float
) -> float:
    """The paper's T_flop = n · l_seq · bs · iters + T_inp (one generated token charged as one trained token)."""
    return num_rollouts * l_seq * batch_size * iters + input_tokens


def ours_ntp_equivalent_tokens(total_flops: float, spec: ModelFlopsSpec, ntp_seq_len: int) -> float:
    """NTP tokens with the same FLOPs: total / (NTP training FLOPs per token) (= total / 6N without attention)."""
    return total_flops / ntp_flops_per_token(spec, ntp_seq_len)


@dataclasses.dataclass(frozen=True)
class ComputeMatch:
    """An RLP run's cost in NTP tokens, by the paper's formula and by ours."""

    step: RLPStepFlops
    iters: int
    total_flops: float
    ours_ntp_tokens: float
    paper_ntp_tokens: float

    def summary(self) -> str:
        s = self.step
        return (
            f"RLP {self.iters} steps: {self.total_flops:.3e} FLOPs (generation {s.generation / s.total:.1%}, "
            f"training {s.training / s.total:.1%}, baseline {s.baseline / s.total:.1%}, ntp {s.ntp / s.total:.1%}); "
            f"NTP-equivalent tokens: ours {self.ours_ntp_tokens:.3e} | paper formula {self.paper_ntp_tokens:.3e}"
        )


def flop_matched_ntp_tokens(
    step: RLPStepFlops,
    spec: ModelFlopsSpec,
    iters: int,
    ntp_seq_len: int,
    num_rollouts: int,
    batch_size: int,
    paper_l_seq: float,
    input_tokens: float,
) -> ComputeMatch:
    """The NTP token budget of the FLOP-matched baseline arm for ``iters`` RLP steps of cost ``step``.

    Args:
        step: per-step FLOPs (:func:`rlp_step_flops`).
        spec: the model.
        iters: RLP optimizer steps.
        ntp_seq_len: sequence length of the NTP baseline arm.
        num_rollouts, batch_size, paper_l_seq, input_tokens: n, bs, l_seq and T_inp of the paper's formula
            (l_seq = prompt + context + thought reproduces the paper's 6B figure; T_inp = document tokens consumed).
    """
    total = step.total * iters
    return ComputeMatch(
        step=step,
        iters=iters,
        total_flops=total,
        ours_ntp_tokens=ours_ntp_equivalent_tokens(total, spec, ntp_seq_len),
        paper_ntp_tokens=paper_ntp_equivalent_tokens(num_rollouts, paper_l_seq, batch_size, iters, input_tokens),
    )
