"""The RLP objective as pure tensor functions (arXiv 2510.01265, eq. 5, 7, 8). No Megatron import.

Shapes: ``B`` target positions (groups), ``G`` thoughts per position, ``T`` token slots per thought (padded).

    rewards_BG    = info_gain_rewards(S_pred_BG, S_ema_B)            # eq. 5, detached
    adv_BG        = group_advantages(rewards_BG, "loo", valid_BG)     # eq. 7
    loss_sum, n, metrics = rlp_policy_loss(logp_BGT, logp_old_BGT, adv_BG, thought_mask_BGT)   # eq. 8

``rlp_policy_loss`` returns a *sum* and a *count* (Megatron-Bridge's ``(loss_sum, num_tokens, reporting)``
convention), so that summing both over micro-batches, gradient-accumulation steps and data-parallel ranks and
dividing once gives exactly the eq. 8 mean of one big batch. Metrics are ``{name: tensor([value_sum, count])}``:
Bridge's ``train_step`` sums them the same way and reports ``value_sum / count``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AGGREGATIONS = ("seq_mean_token_mean", "token_mean")
_GRPO_EPS = 1e-6  # keeps (r - mean) / std finite for a group whose rewards are all equal


class UnknownEstimatorError(KeyError):
    """An advantage estimator name is not registered."""


class RLPShapeError(ValueError):
    """Tensors passed to an RLP objective function have inconsistent shapes."""


def info_gain_rewards(logp_with_thought_BG: torch.Tensor, logp_no_thought_B: torch.Tensor | None) -> torch.Tensor:
    """Information-gain reward r(c_i) = S_pred(c_i) − S_ema (arXiv 2510.01265, eq. 5).

    Args:
        logp_with_thought_BG: S_pred = log p_θ(x_t | x_<t, c_i), one per thought, ``[B, G]``.
        logp_no_thought_B: S_ema = log p_φ(x_t | x_<t), one per position, ``[B]``; ``None`` for ``baseline=none``
            (S_ema = 0, the reward is S_pred itself).

    Returns:
        ``[B, G]`` rewards (fp32, or fp64 for fp64 inputs) with no gradient (the paper stops gradients through both terms).
    """
    if logp_with_thought_BG.dim() != 2:
        raise RLPShapeError(f"logp_with_thought_BG must be [B, G], got {tuple(logp_with_thought_BG.shape)}")
    s_pred_BG = _at_least_fp32(logp_with_thought_BG.detach())
    if logp_no_thought_B is None:
        return s_pred_BG.clone()
    if logp_no_thought_B.shape != s_pred_BG.shape[:1]:
        raise RLPShapeError(
            f"logp_no_thought_B must be [B]={tuple(s_pred_BG.shape[:1])}, got {tuple(logp_no_thought_B.shape)}"
        )
    return s_pred_BG - logp_no_thought_B.detach().to(s_pred_BG.dtype)[:, None]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 (log-probs of a bf16 model) to fp32; keep fp64 (references, tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# --- advantage estimators -------------------------------------------------------------------------------------------
# Each takes (rewards_BG float, valid_BG bool) and returns advantages_BG with zeros at invalid entries.
Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator adding an advantage estimator to the registry under ``name``."""

    def wrap(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = fn
        return fn

    return wrap


def available_estimators() -> tuple[str, ...]:
    """Names of the registered advantage estimators."""
    return tuple(sorted(_ESTIMATORS))


def get_estimator(name: str) -> Estimator:
    """Look up an estimator; the error lists the valid names."""
    try:
        return _ESTIMATORS[name]
    except KeyError:
        raise UnknownEstimatorError(f"unknown advantage estimator {name!r}; valid: {available_estimators()}") from None


def _group_stats(rewards_BG: torch.Tensor, valid_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group valid count n_B and mean over valid members (0 where n = 0)."""
    n_B = valid_BG.sum(dim=1).to(rewards_BG.dtype)
    mean_B = (rewards_BG * valid_BG).sum(dim=1) / n_B.clamp(min=1)
    return n_B, mean_B


@register_estimator("loo")
def _loo(rewards_BG: torch.Tensor, valid_BG: torch.Tensor) -> torch.Tensor:
    # eq. 7: G/(G-1)·(r_i − mean_j r_j) == r_i − mean_{j≠i} r_j, the leave-one-out baseline; G = valid members.
    n_B, mean_B = _group_stats(rewards_BG, valid_BG)
    scale_B = torch.where(n_B >= 2, n_B / (n_B - 1).clamp(min=1), torch.zeros_like(n_B))
    return (rewards_BG - mean_B[:, None]) * scale_B[:, None] * valid_BG


@register_estimator("grpo")
def _grpo(rewards_BG: torch.Tensor, valid_BG: torch.Tensor) -> torch.Tensor:
    # (r − mean) / (std + eps) per group, std with Bessel's correction over the valid members.
    n_B, mean_B = _group_stats(rewards_BG, valid_BG)
    centred_BG = (rewards_BG - mean_B[:, None]) * valid_BG
    var_B = (centred_BG**2).sum(dim=1) / (n_B - 1).clamp(min=1)
    adv_BG = centred_BG / (var_B.sqrt() + _GRPO_EPS)[:, None]
    return adv_BG * (n_B >= 2)[:, None]


@register_estimator("batch")
def _batch(rewards_BG: torch.Tensor, valid_BG: torch.Tensor) -> torch.Tensor:
    # Normalised over every valid thought of the (local) batch: groups are compared with each other, so a per-group
    # offset such as S_ema no longer cancels. Note: under data parallelism this is the local batch.
    n = valid_BG.sum().to(rewards_BG.dtype)
    if n < 2:
        return torch.zeros_like(rewards_BG)
    mean = (rewards_BG * valid_BG).sum() / n
    centred_BG = (rewards_BG - mean) * valid_BG
    std = ((centred_BG**2).sum() / (n - 1)).sqrt()
    return centred_BG / (std + _GRPO_EPS)


def group_advantages(
    rewards_BG: torch.Tensor, estimator: str = "loo", mask_BG: torch.Tensor | None = None
) -> torch.Tensor:
    """Advantages from rewards (arXiv 2510.01265, eq. 7 for ``loo``).

    - ``loo``: A_i = G/(G−1)·(r_i − mean_j r_j), no std division (eq. 7). Equals r_i minus the mean of the others.
    - ``grpo``: (r_i − mean) / (std + 1e-6) within the group (unbiased std).
    - ``batch``: (r − mean) / (std + 1e-6) over all valid thoughts of the batch; the only one where adding a constant
      to one group's rewards (e.g. a different S_ema) changes the advantages.

    With a validity mask (e.g. truncated thoughts under ``truncation=exclude``), means and stds run over the valid
    members only and G counts valid members; invalid thoughts get advantage 0, and so does every member of a group
    with fewer than 2 valid thoughts (no baseline can be formed from a single sample).

    Args:
        rewards_BG: ``[B, G]`` rewards (gradient is not propagated).
        estimator: a registered estimator name (see :func:`available_estimators`).
        mask_BG: optional ``[B, G]`` bool, True = thought takes part.

    Returns:
        ``[B, G]`` advantages (fp32, or fp64 for fp64 inputs), detached.
    """
    if rewards_BG.dim() != 2:
        raise RLPShapeError(f"rewards_BG must be [B, G], got {tuple(rewards_BG.shape)}")
    fn = get_estimator(estimator)
    rewards_BG = _at_least_fp32(rewards_BG.detach())
    if mask_BG is None:
        valid_BG = torch.ones_like(rewards_BG, dtype=torch.bool)
    else:
        if mask_BG.shape != rewards_BG.shape:
            raise RLPShapeError(f"mask_BG {tuple(mask_BG.shape)} != rewards_BG {tuple(rewards_BG.shape)}")
        valid_BG = mask_BG.bool()
    # Zero invalid rewards first: a NaN/inf reward of an excluded thought must not leak through 0 * inf.
    rewards_BG = torch.where(valid_BG, rewards_BG, torch.zeros_like(rewards_BG))
    return fn(rewards_BG, valid_BG).detach()


# --- the clipped policy loss ----------------------------------------------------------------------------------------
def rlp_policy_loss(
    logp_BGT: torch.Tensor,
    logp_old_BGT: torch.Tensor,
    advantages_BG: torch.Tensor,
    mask_BGT: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "seq_mean_token_mean",
    num_thoughts_global: int | float | torch.Tensor | None = None,
    kl_beta: float = 0.0,
    logp_ref_BGT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped surrogate over thought tokens (arXiv 2510.01265, eq. 8).

    Per thought token u of thought i: ρ_u = exp(logp − logp_old) and
    ℓ_u = −min(ρ_u·A_i, clip(ρ_u, 1−ε_low, 1+ε_high)·A_i)  (+ β·KL_u with a reference).

    Aggregations (the returned pair (loss_sum, count) is additive over micro-batches; loss = Σ loss_sum / Σ count):

    - ``seq_mean_token_mean`` (eq. 8): loss_sum = Σ_thoughts mean_u ℓ_u, count = number of thoughts with ≥ 1 token.
    - ``token_mean``: loss_sum = Σ_tokens ℓ_u, count = number of thought tokens.

    Args:
        logp_BGT: log π_θ of each sampled thought token (with gradient), ``[B, G, T]``.
        logp_old_BGT: log π_θold of the same tokens (the rollout policy; ``logp.detach()`` for one update per batch,
            where ρ = 1 and clipping is inert).
        advantages_BG: ``[B, G]`` from :func:`group_advantages`.
        mask_BGT: ``[B, G, T]``, 1 where the slot is a policy-generated thought token (the only ones trained).
        eps_low: lower clip, ratio floor 1 − eps_low.
        eps_high: upper clip, ratio ceiling 1 + eps_high.
        aggregation: one of :data:`AGGREGATIONS`.
        num_thoughts_global: the global count of the aggregation's unit (thoughts for ``seq_mean_token_mean``, thought
            tokens for ``token_mean``) over all micro-batches and ranks, when known in advance. If given, the first
            return value is ``loss_sum / num_thoughts_global`` (this micro-batch's share of the global mean, to be
            summed by a hand-written loop); leave it ``None`` under Megatron's ``calculate_per_token_loss=True``, which
            divides by the all-reduced count itself.
        kl_beta: β of the per-token KL(π_θ ‖ π_ref) penalty (k3 estimator); 0 in the paper.
        logp_ref_BGT: reference log-probs, required when ``kl_beta > 0``.

    Returns:
        ``(loss_sum, count, metrics)``: scalar loss (with gradient), int count, and ``{name: tensor([sum, count])}``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {AGGREGATIONS}")
    if logp_BGT.dim() != 3 or logp_old_BGT.shape != logp_BGT.shape or mask_BGT.shape != logp_BGT.shape:
        raise RLPShapeError(
            f"logp {tuple(logp_BGT.shape)}, logp_old {tuple(logp_old_BGT.shape)} and mask {tuple(mask_BGT.shape)} "
            "must all be the same [B, G, T]"
        )
    if advantages_BG.shape != logp_BGT.shape[:2]:
        raise RLPShapeError(f"advantages_BG {tuple(advantages_BG.shape)} != [B, G] {tuple(logp_BGT.shape[:2])}")
    if kl_beta > 0 and logp_ref_BGT is None:
        raise ValueError("kl_beta > 0 needs logp_ref_BGT")

    # bf16 log-probs would round ratios near 1 to steps of ~0.4%; compute the surrogate in fp32 (autograd casts back).
    logp_BGT = _at_least_fp32(logp_BGT)
    logp_old_BGT = logp_old_BGT.to(logp_BGT.dtype)
    mask_BGT = mask_BGT.to(logp_BGT.dtype)
    adv_BG1 = advantages_BG.detach().to(logp_BGT.dtype)[..., None]
    # Masked slots may hold garbage (padding log-probs, -inf); zero the log-ratio there so exp() stays finite.
    log_ratio_BGT = torch.where(mask_BGT > 0, logp_BGT - logp_old_BGT.detach(), torch.zeros_like(logp_BGT))
    ratio_BGT = torch.exp(log_ratio_BGT)
    surr_BGT = ratio_BGT * adv_BG1
    surr_clipped_BGT = torch.clamp(ratio_BGT, 1.0 - eps_low, 1.0 + eps_high) * adv_BG1
    token_loss_BGT = -torch.minimum(surr_BGT, surr_clipped_BGT)
    if kl_beta > 0:
        # k3 estimator of KL(π_θ ‖ π_ref) on samples from π_θ: e^{d} − d − 1 with d = log π_ref − log π_θ (≥ 0).
        d_BGT = torch.where(
            mask_BGT > 0, logp_ref_BGT.detach().to(logp_BGT.dtype) - logp_BGT, torch.zeros_like(logp_BGT)
        )
        kl_BGT = torch.exp(d_BGT) - d_BGT - 1.0
        token_loss_BGT = token_loss_BGT + kl_beta * kl_BGT
    token_loss_BGT = token_loss_BGT * mask_BGT

    len_BG = mask_BGT.sum(dim=-1)
    has_tokens_BG = len_BG > 0
    n_thoughts = has_tokens_BG.sum()
    n_tokens = mask_BGT.sum()
    if aggregation == "seq_mean_token_mean":
        loss_sum = (token_loss_BGT.sum(dim=-1) / len_BG.clamp(min=1)).sum()
        count = n_thoughts
    else:
        loss_sum = token_loss_BGT.sum()
        count = n_tokens
    count = count.detach().to(torch.int)
    # Metrics always report the un-normalised sum so Bridge's Σ value / Σ count stays the eq. 8 mean.
    metrics = _policy_metrics(
        loss_sum, count, log_ratio_BGT, ratio_BGT, adv_BG1, mask_BGT, has_tokens_BG, eps_low, eps_high
    )
    if kl_beta > 0:
        metrics["rlp kl_ref"] = _pair((kl_BGT * mask_BGT).sum(), n_tokens)
    if num_thoughts_global is not None:
        loss_sum = loss_sum / num_thoughts_global
    return loss_sum, count, metrics


def _pair(value_sum: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Reporting pair ``tensor([value_sum, count])`` in float32, detached (Bridge's convention)."""
    value_sum = value_sum.detach().float().reshape(1)
    return torch.cat([value_sum, torch.as_tensor(count, dtype=torch.float32, device=value_sum.device).reshape(1)])


@torch.no_grad()
def _policy_metrics(
    loss_sum: torch.Tensor,
    count: torch.Tensor,
    log_ratio_BGT: torch.Tensor,
    ratio_BGT: torch.Tensor,
    adv_BG1: torch.Tensor,
    mask_BGT: torch.Tensor,
    has_tokens_BG: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> dict[str, torch.Tensor]:
    n_tokens = mask_BGT.sum()
    n_thoughts = has_tokens_BG.sum()
    # A token is "clipped" when the clipped branch is the binding one, i.e. its gradient is zeroed by clipping.
    clipped_high = (ratio_BGT > 1.0 + eps_high) & (adv_BG1 > 0)
    clipped_low = (ratio_BGT < 1.0 - eps_low) & (adv_BG1 < 0)
    adv_BG = adv_BG1[..., 0]
    return {
        "rlp loss": _pair(loss_sum, count),
        "rlp clip fraction": _pair(((clipped_high | clipped_low) * mask_BGT).sum(), n_tokens),
        "rlp clip fraction high": _pair((clipped_high * mask_BGT).sum(), n_tokens),
        "rlp clip fraction low": _pair((clipped_low * mask_BGT).sum(), n_tokens),
        "rlp ratio mean": _pair((ratio_BGT * mask_BGT).sum(), n_tokens),
        # k3 estimate of KL(π_old ‖ π_θ): (ρ − 1) − log ρ, ≥ 0 per token.
        "rlp approx kl": _pair(((ratio_BGT - 1.0 - log_ratio_BGT) * mask_BGT).sum(), n_tokens),
        # Advantages have mean 0 over each normalisation set, so this mean square is their (pooled) variance.
        "rlp advantage var": _pair((adv_BG**2 * has_tokens_BG).sum(), n_thoughts),
        "rlp trained thought length": _pair(n_tokens, n_thoughts),
    }


@torch.no_grad()
def rlp_reward_metrics(
    s_pred_BG: torch.Tensor,
    s_ema_B: torch.Tensor | None,
    valid_BG: torch.Tensor | None = None,
    truncated_BG: torch.Tensor | None = None,
    thought_len_BG: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Reporting pairs for the reward side of a step (reward mean/var, positive-gain fraction, S_pred, S_ema, ...).

    Rewards are taken over valid thoughts; the truncation rate and thought length over all thoughts, so that
    excluded thoughts are still counted.
    """
    s_pred_BG = s_pred_BG.detach().float()
    valid_BG = torch.ones_like(s_pred_BG, dtype=torch.bool) if valid_BG is None else valid_BG.bool()
    rewards_BG = torch.where(valid_BG, info_gain_rewards(s_pred_BG, s_ema_B), torch.zeros_like(s_pred_BG))
    n_valid = valid_BG.sum()
    n_all = s_pred_BG.numel()
    out = {
        "rlp reward mean": _pair(rewards_BG.sum(), n_valid),
        "rlp reward sq mean": _pair((rewards_BG**2).sum(), n_valid),
        "rlp positive gain fraction": _pair(((rewards_BG > 0) & valid_BG).sum(), n_valid),
        "rlp s_pred mean": _pair(torch.where(valid_BG, s_pred_BG, torch.zeros_like(s_pred_BG)).sum(), n_valid),
        "rlp valid fraction": _pair(n_valid, n_all),
    }
    if s_ema_B is not None:
        out["rlp s_ema mean"] = _pair(s_ema_B.detach().float().sum(), s_ema_B.numel())
    if truncated_BG is not None:
        out["rlp truncation rate"] = _pair(truncated_BG.sum(), n_all)
    if thought_len_BG is not None:
        out["rlp thought length"] = _pair(thought_len_BG.float().sum(), n_all)
    return out


def reduce_metrics(metrics_list: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Sum reporting pairs over micro-batches and divide, as Bridge's ``train_step`` does (single process).

    ``* var`` entries also yield a ``* std``; ``* sq mean`` with a matching ``* mean`` yield a ``* std``.
    """
    out: dict[str, float] = {}
    for key in metrics_list[0]:
        total = torch.stack([m[key].reshape(2) for m in metrics_list]).sum(dim=0)
        out[key] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
    for key in list(out):
        if key.endswith(" var"):
            out[key[: -len(" var")] + " std"] = max(out[key], 0.0) ** 0.5
        elif key.endswith(" sq mean") and key[: -len(" sq mean")] + " mean" in out:
            base = key[: -len(" sq mean")]
            out[base + " std"] = max(out[key] - out[base + " mean"] ** 2, 0.0) ** 0.5
    return out
