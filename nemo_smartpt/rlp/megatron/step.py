"""The RLP training forward and loss as a Megatron forward step (arXiv 2510.01265, eq. 5, 7, 8).

One training forward per prepared micro-batch (:mod:`nemo_smartpt.rlp.megatron.prepare`): the B·G scoring rows
``P x_<t <think> c_i </think> x_t`` go through the model once. On the last pipeline stage the output is the
vocab-sharded logits; the loss function reads from them, never gathering the vocabulary:

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
from nemo_smartpt.rlp.megatron.logprobs import causal_mask, vocab_parallel_logprobs
from nemo_smartpt.rlp.objective import _pair, group_advantages, info_gain_rewards, rlp_policy_loss, rlp_reward_metrics

if TYPE_CHECKING:
    from megatron.bridge.training.state import GlobalState

REWARD_KEYS = ("rlp reward mean", "rlp reward sq mean", "rlp positive gain fraction")


def rlp_forward(batch: dict[str, torch.Tensor], model) -> torch.Tensor:
    """The training forward of a prepared batch: logits shard ``[N, L, V/tp]`` on the last stage, hidden states else."""
    input_ids_NL = batch["input_ids_NL"]
    return model(input_ids_NL, batch["position_ids_NL"], causal_mask(input_ids_NL.shape[1], input_ids_NL.device))


def rlp_loss_func(
    cfg: RLPConfig, batch: dict[str, torch.Tensor], logits_NLV: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """RLP loss of one prepared micro-batch from its vocab-sharded logits (last pipeline stage).

    Args:
        cfg: RLP config (temperature, estimator, clip, aggregation, ntp weight).
        batch: the prepared batch (see :mod:`nemo_smartpt.rlp.megatron.prepare` for the keys).
        logits_NLV: the model output, ``[N + M, L, V/tp]``.

    Returns:
        ``(loss_sum, count, metrics)``: eq. 8's sum over thoughts (plus the weighted NTP term), the number of thoughts
        (``seq_mean_token_mean``) or thought tokens (``token_mean``), and reporting pairs.
    """
    B = int(batch["num_groups"])
    N = batch["predict_index_N"].shape[0]
    if B < 1 or N % B:
        raise ValueError(f"prepared batch has {N} scoring rows for {B} groups; rows must be B·G")
    G = N // B
    L = logits_NLV.shape[1]
    labels_NL = batch["labels_NL"][:N]
    rlp_logits_NLV = logits_NLV[:N]

    # Policy log-probs at the sampling temperature, with gradient (vocab-parallel: no [.., V] gather).
    logp_NL = vocab_parallel_logprobs(rlp_logits_NLV, labels_NL, cfg.temperature)
    # S_pred at T = 1 from the one predict position per row; the indexed copy is detached (stop-gradient, eq. 5).
    rows_N = torch.arange(N, device=logits_NLV.device)
    predict_N = batch["predict_index_N"]
    s_pred_N = vocab_parallel_logprobs(rlp_logits_NLV[rows_N, predict_N].detach(), labels_NL[rows_N, predict_N])

    has_s_ema = bool(batch["has_s_ema"]) and cfg.baseline != "none"
    s_ema_B = batch["s_ema_B"].float() if has_s_ema else None
    s_pred_BG = s_pred_N.view(B, G)
    valid_BG = batch["valid_N"].view(B, G).bool()
    rewards_BG = info_gain_rewards(s_pred_BG, s_ema_B)
    adv_BG = group_advantages(rewards_BG, cfg.estimator, valid_BG)
    thought_mask_BGL = batch["thought_mask_NL"][:N].view(B, G, L)
    logp_BGL = logp_NL.view(B, G, L)
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
        ntp_nll_ML = -vocab_parallel_logprobs(logits_NLV[N:], batch["labels_NL"][N:])
        ntp_sum = (ntp_nll_ML * ntp_mask_ML).sum()
        ntp_count = ntp_mask_ML.sum()
        # Scale so that Σ loss_sum / Σ count ≈ eq. 8 mean + λ · NTP token mean (exact when every micro-batch has the
        # same thoughts-to-tokens ratio; the schedule only knows one normaliser, the RLP count).
        loss_sum = loss_sum + cfg.ntp_loss_weight * ntp_sum * (count.float() / ntp_count.clamp(min=1))
        metrics["rlp ntp loss"] = _pair(ntp_sum, ntp_count)
    return loss_sum, count, metrics


def rlp_forward_step(cfg: RLPConfig, data_iterator, model):
    """Megatron forward step over an iterator of *prepared* batches: ``(output_tensor, loss_func)``."""
    batch = next(data_iterator)
    return rlp_forward(batch, model), partial(rlp_loss_func, cfg, batch)


class RLPForwardStep:
    """Bridge forward step: prepare each micro-batch from Bridge's packed samples, then the training forward.

    Preparation (positions, rollouts, baseline) runs lazily inside the schedule's forward step, right before the
    training forward of the same micro-batch; so rollouts are always from the current weights, there is one data path
    (Bridge's iterator), and nothing else in ``pretrain()`` changes. Under PP > 1 preparation is collective and cannot
    run inside the schedule: the callback prepares the whole step before it (``run.pipeline``) and this pops the
    prepared micro-batches in order. Each micro-batch's RNG is seeded from (seed, step, DP rank, micro-batch index),
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

        if return_schedule_plan:
            raise NotImplementedError("RLP does not build combined 1F1B schedule plans")
        if self.run.pipeline is not None:
            prepared = self.run.pipeline.pop(data_iterator)
            return rlp_forward(prepared, model), partial(rlp_loss_func, self.run.cfg, prepared)
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
            ntp_labels_bS=raw.get("labels"),
            ntp_loss_mask_bS=raw.get("loss_mask"),
        )
        self._microbatch += 1
        return rlp_forward(prepared, model), partial(rlp_loss_func, self.run.cfg, prepared)
