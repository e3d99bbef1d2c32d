"""The RLP training forward and loss as a Megatron forward step (arXiv 2510.01265, eq. 5, 7, 8).

One training forward per prepared micro-batch (:mod:`nemo_smartpt.rlp.megatron.prepare`): the B·G scoring rows
``P x_<t <think> c_i </think> x_t`` go through the model once. On the last pipeline stage the model's output processor
(:mod:`nemo_smartpt.rlp.megatron.logits`) turns the final hidden states into log-probs at the scored positions only
(thought tokens, one target per row), in chunks of ``rlp.logits_chunk_tokens`` positions, never building logits for
every position nor gathering the vocabulary; the loss function reads them:

    logp_u   = log softmax(z/T)[c_u]  on thought tokens          (policy, with gradient; T = sampling temperature)
    S_pred   = log softmax(z)[x_t]    at predict_index           (scorer, detached; eq. 5)
    r        = S_pred − S_ema                                    (eq. 5, S_ema from the prepared batch)
    A        = group_advantages(r, estimator, valid)             (eq. 7 for "loo")
    loss_sum, count = rlp_policy_loss(logp, logp.detach(), A, thought_mask)   (eq. 8; ratio 1 at one update/batch)

and returns Bridge's ``(loss_sum, count, {name: tensor([sum, count])})``. Run Megatron with
``calculate_per_token_loss=True``: the schedule then sums ``loss_sum`` and ``count`` over micro-batches and DP ranks
and divides once, which is exactly eq. 8's mean over all B·G thoughts of the global batch.

Because the forward step only reads prepared tensors, it runs under ``get_forward_backward_func()`` with TP and PP
(every stage pulls the same prepared dict; only the last one uses the masks, S_ema and labels). Under PP, prepared
micro-batches must share one ``[micro_batch_size, seq_length]`` shape (pad rows), as the p2p buffers are fixed.

Two entry points:

- :func:`rlp_forward_step` ``(cfg, data_iterator, model)`` for iterators of prepared batches (tests, custom loops);
  bind ``cfg`` with ``functools.partial``.
- :class:`RLPForwardStep` for Bridge's ``pretrain()``: under PP = 1 it pulls packed samples from Bridge's iterator and
  prepares each micro-batch lazily right before its training forward (generation inside the schedule's forward step);
  under PP > 1 the callback prepared the step's micro-batches before the schedule
  (:class:`~nemo_smartpt.rlp.megatron.pipeline.PipelineFeed`) and it pops them, advancing and checking Bridge's iterator.
  Prepared micro-batches differ in shape, so the pipeline p2p runs with ``variable_seq_lengths`` (the callback
  switches it on for dense models).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from nemo_smartpt.rlp.config import RLPConfig
from nemo_smartpt.rlp.megatron.logits import SelectedLogprobs, forward_with_processor
from nemo_smartpt.rlp.megatron.logprobs import causal_mask, unwrap_model, vocab_parallel_logprobs
from nemo_smartpt.rlp.objective import _pair, group_advantages, info_gain_rewards, rlp_policy_loss, rlp_reward_metrics

if TYPE_CHECKING:
    from megatron.bridge.training.state import GlobalState

REWARD_KEYS = ("rlp reward mean", "rlp reward sq mean", "rlp positive gain fraction")


def scored_masks(batch: dict[str, torch.Tensor], cfg: RLPConfig):
    """``(grad_mask, nograd_mask, temperature)`` ``[N_all, L]``: where the loss needs log-probs and at which T.

    With gradient: thought tokens (at the sampling temperature) and the mixed objective's next-token rows (T = 1).
    Without: the one S_pred target per scoring row (T = 1, eq. 5's stop-gradient).
    """
    labels_NL = batch["labels_NL"]
    N = batch["predict_index_N"].shape[0]
    thought_NL = batch["thought_mask_NL"].bool()
    grad_NL = thought_NL.clone()
    if cfg.ntp_loss_weight > 0:
        grad_NL[N:] |= batch["ntp_loss_mask_NL"][N:].bool()
    nograd_NL = torch.zeros_like(grad_NL)
    nograd_NL[torch.arange(N, device=labels_NL.device), batch["predict_index_N"]] = True
    temperature_NL = torch.ones(labels_NL.shape, device=labels_NL.device).masked_fill(thought_NL, cfg.temperature)
    return grad_NL, nograd_NL, temperature_NL


def rlp_forward(batch: dict[str, torch.Tensor], model, cfg: RLPConfig | None = None) -> torch.Tensor:
    """The training forward of a prepared batch: ``[N_all, L]`` fp32 log-probs at the scored positions on the last
    stage (:class:`~nemo_smartpt.rlp.megatron.logits.SelectedLogprobs`: no full-vocabulary logits), hidden states on
    the others. ``cfg`` None gives the full vocab-sharded logits ``[N, L, V/tp]`` (the reference path)."""
    grouped = "sp_input_ids_RS" in batch  # rlp.shared_prefix_forward (nemo_smartpt.rlp.megatron.shared_attention)
    processor = None
    if cfg is not None:
        grad_NL, nograd_NL, temperature_NL = scored_masks(batch, cfg)
        processor = SelectedLogprobs(
            grad_NL,
            nograd_NL,
            batch["labels_NL"],
            temperature_NL,
            cfg.logits_chunk_tokens,
            index_NL=batch["sp_index_NL"] if grouped else None,
        )
    if grouped:
        from nemo_smartpt.rlp.megatron.shared_attention import shared_prefix_forward

        return shared_prefix_forward(batch, model, processor)
    input_ids_NL = batch["input_ids_NL"]
    mask = causal_mask(input_ids_NL.shape[1], input_ids_NL.device)
    if processor is None:
        return model(input_ids_NL, batch["position_ids_NL"], mask)
    return forward_with_processor(model, unwrap_model(model), processor, input_ids_NL, batch["position_ids_NL"], mask)


def logprobs_from_logits(cfg: RLPConfig, batch: dict[str, torch.Tensor], logits_NLV: torch.Tensor) -> torch.Tensor:
    """The reference (full-logits) path: the same ``[N_all, L]`` tensor as :func:`rlp_forward` from ``[.., V/tp]``
    logits of every position. Kept for tests and benchmarks; the training step never builds these logits."""
    grad_NL, nograd_NL, temperature_NL = scored_masks(batch, cfg)
    logp_T = vocab_parallel_logprobs(logits_NLV, batch["labels_NL"], cfg.temperature)
    logp_1 = vocab_parallel_logprobs(logits_NLV, batch["labels_NL"])
    thought_NL = batch["thought_mask_NL"].bool()
    out = torch.where(thought_NL, logp_T, logp_1) * grad_NL
    return out + torch.where(nograd_NL, logp_1.detach(), torch.zeros_like(logp_1))


def rlp_loss_func(
    cfg: RLPConfig, batch: dict[str, torch.Tensor], logp_all_NL: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """RLP loss of one prepared micro-batch from the scored log-probs (last pipeline stage).

    Args:
        cfg: RLP config (temperature, estimator, clip, aggregation, ntp weight).
        batch: the prepared batch (see :mod:`nemo_smartpt.rlp.megatron.prepare` for the keys).
        logp_all_NL: :func:`rlp_forward`'s output, ``[N + M, L]``: log π at thought tokens (T = sampling temperature,
            with gradient), S_pred at each row's target (T = 1, detached), next-token log-probs of mixed rows.

    Returns:
        ``(loss_sum, count, metrics)``: eq. 8's sum over thoughts (plus the weighted NTP term), the number of thoughts
        (``seq_mean_token_mean``) or thought tokens (``token_mean``), and reporting pairs.
    """
    B = int(batch["num_groups"])
    N = batch["predict_index_N"].shape[0]
    if B < 1 or N % B:
        raise ValueError(f"prepared batch has {N} scoring rows for {B} groups; rows must be B·G")
    G = N // B
    L = logp_all_NL.shape[1]
    logp_NL = logp_all_NL[:N]
    rows_N = torch.arange(N, device=logp_all_NL.device)
    s_pred_N = logp_NL[rows_N, batch["predict_index_N"]].detach()  # stop-gradient, eq. 5

    has_s_ema = bool(batch["has_s_ema"]) and cfg.baseline != "none"
    s_ema_B = batch["s_ema_B"].float() if has_s_ema else None
    s_pred_BG = s_pred_N.view(B, G)
    valid_BG = batch["valid_N"].view(B, G).bool()
    rewards_BG = info_gain_rewards(s_pred_BG, s_ema_B)
    adv_BG = group_advantages(rewards_BG, cfg.estimator, valid_BG)
    thought_mask_BGL = batch["thought_mask_NL"][:N].view(B, G, L)
    # Only thought tokens are read below (the mask zeroes the rest, the S_pred column included).
    logp_BGL = (logp_NL * batch["thought_mask_NL"][:N]).view(B, G, L)
    loss_sum, count, metrics = rlp_policy_loss(
        logp_BGL,
        logp_BGL.detach(),
        adv_BG,
        thought_mask_BGL,
        eps_low=cfg.eps_low,
        eps_high=cfg.eps_high,
        aggregation=cfg.aggregation,
    )
    reward_metrics = rlp_reward_metrics(
        s_pred_BG,
        s_ema_B,
        valid_BG,
        batch["truncated_N"].view(B, G),
        batch["thought_len_N"].view(B, G),
    )
    if s_ema_B is None and cfg.baseline != "none":
        # No baseline forward this step (baseline_every > 1): a "reward" would be S_pred alone; report S_pred only.
        reward_metrics = {k: v for k, v in reward_metrics.items() if k not in REWARD_KEYS}
    metrics.update(reward_metrics)
    with torch.no_grad():
        mask_NL = batch["thought_mask_NL"][:N].float()
        diff = ((logp_NL.detach() - batch["rollout_logp_NL"][:N].float()).abs() * mask_NL).sum()
        metrics["rlp rollout logp abs diff"] = _pair(diff, mask_NL.sum())

    if cfg.ntp_loss_weight > 0:
        ntp_mask_ML = batch["ntp_loss_mask_NL"][N:].float()
        ntp_sum = (-logp_all_NL[N:] * ntp_mask_ML).sum()
        ntp_count = ntp_mask_ML.sum()
        # Scale so that Σ loss_sum / Σ count ≈ eq. 8 mean + λ · NTP token mean (exact when every micro-batch has the
        # same thoughts-to-tokens ratio; the schedule only knows one normaliser, the RLP count).
        loss_sum = loss_sum + cfg.ntp_loss_weight * ntp_sum * (count.float() / ntp_count.clamp(min=1))
        metrics["rlp ntp loss"] = _pair(ntp_sum, ntp_count)
    return loss_sum, count, metrics


def rlp_forward_step(cfg: RLPConfig, data_iterator, model):
    """Megatron forward step over an iterator of *prepared* batches: ``(output_tensor, loss_func)``."""
    batch = next(data_iterator)
    return rlp_forward(batch, model, cfg), partial(rlp_loss_func, cfg, batch)


class RLPForwardStep:
    """Bridge forward step: prepare each micro-batch from Bridge's packed samples, then the training forward.

    Preparation (positions, rollouts, baseline) runs lazily inside the schedule's forward step, right before the
    training forward of the same micro-batch; so rollouts are always from the current weights, there is one data path
    (Bridge's iterator), and nothing else in ``pretrain()`` changes. Under PP > 1 preparation is collective and cannot
    run inside the schedule: the callback prepares the whole step before it (``run.pipeline``) and this pops the
    prepared micro-batches in order. Each micro-batch's RNG is seeded from (seed, step, the micro-batch's slot in the global batch),
    the same under both paths.

    Args:
        run: the shared :class:`~nemo_smartpt.rlp.megatron.callbacks.RLPRun` (config, preparer, EMA, stats).
    """

    def __init__(self, run):
        self.run = run
        self._step = -1
        self._microbatch = 0

    def __call__(self, state: GlobalState, data_iterator, model, return_schedule_plan: bool = False):
        from megatron.core import parallel_state
        from megatron.core.num_microbatches_calculator import get_num_microbatches

        if return_schedule_plan:
            raise NotImplementedError("RLP does not build combined 1F1B schedule plans")
        if self.run.pipeline is not None:
            prepared = self.run.pipeline.pop(data_iterator)
            return rlp_forward(prepared, model, self.run.cfg), partial(rlp_loss_func, self.run.cfg, prepared)
        step = int(state.train_state.step)
        if step != self._step:
            self._step, self._microbatch = step, 0
        raw = next(data_iterator)
        prepared = self.run.preparer.prepare(
            raw["tokens"],
            model,
            step=step,
            microbatch=self._microbatch,
            dp_rank=parallel_state.get_data_parallel_rank(),
            dp_size=parallel_state.get_data_parallel_world_size(),
            ntp_labels_bS=raw.get("labels"),
            ntp_loss_mask_bS=raw.get("loss_mask"),
            last_microbatch=self._microbatch + 1 >= get_num_microbatches(),
        )
        self._microbatch += 1
        return rlp_forward(prepared, model, self.run.cfg), partial(rlp_loss_func, self.run.cfg, prepared)
