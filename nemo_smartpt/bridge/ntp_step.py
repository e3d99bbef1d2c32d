"""The next-token forward step, with loss split by source and by phase.

Bridge's own ``gpt_step.forward_step`` drops every batch key it does not know, so the source and phase each sample
carries (from :mod:`nemo_smartpt.blend.phased_dataset`) would be lost. This step reads them, computes the same masked
next-token loss as Bridge (``(loss_sum, num_tokens, {"lm loss": [sum, count]})``), and adds per-source and per-phase
sums to a :class:`LossBreakdown` that the metrics callback reduces across data-parallel ranks once per step. Keeping
the breakdown out of the loss dict matters: Bridge divides every loss-dict entry by its count, and a source absent from
a step would log NaN.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import torch


@dataclass
class LossBreakdown:
    """Token-loss sums and counts per source and per phase, accumulated over one optimizer step (this rank)."""

    source_names: list[str] = field(default_factory=list)
    phase_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.source_sum = torch.zeros(max(len(self.source_names), 1), dtype=torch.float64)
        self.source_count = torch.zeros_like(self.source_sum)
        self.phase_sum = torch.zeros(max(len(self.phase_names), 1), dtype=torch.float64)
        self.phase_count = torch.zeros_like(self.phase_sum)
        self.last_phase: int | None = None

    def add(self, per_sample_loss: torch.Tensor, per_sample_tokens: torch.Tensor, source_ids, phase_ids) -> None:
        loss = per_sample_loss.detach().double().cpu()
        tokens = per_sample_tokens.detach().double().cpu()
        if source_ids is not None and self.source_names:
            ids = torch.as_tensor(source_ids).long().cpu().view(-1)
            self.source_sum.index_add_(0, ids, loss)
            self.source_count.index_add_(0, ids, tokens)
        if phase_ids is not None and self.phase_names:
            ids = torch.as_tensor(phase_ids).long().cpu().view(-1)
            self.phase_sum.index_add_(0, ids, loss)
            self.phase_count.index_add_(0, ids, tokens)
            self.last_phase = int(ids.max())

    def reduced(self, group=None) -> dict[str, float]:
        """Mean loss per source/phase over the step, summed across ``group`` (data-parallel ranks)."""
        packed = torch.cat([self.source_sum, self.source_count, self.phase_sum, self.phase_count]).float()
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed, group=group)
        n_s, n_p = len(self.source_sum), len(self.phase_sum)
        s_sum, s_cnt = packed[:n_s], packed[n_s : 2 * n_s]
        p_sum, p_cnt = packed[2 * n_s : 2 * n_s + n_p], packed[2 * n_s + n_p :]
        out = {}
        for i, name in enumerate(self.source_names):
            if s_cnt[i] > 0:
                out[f"loss/source/{name}"] = float(s_sum[i] / s_cnt[i])
                out[f"tokens/source/{name}"] = float(s_cnt[i])
        for i, name in enumerate(self.phase_names):
            if p_cnt[i] > 0:
                out[f"loss/phase/{name}"] = float(p_sum[i] / p_cnt[i])
        return out


def masked_token_loss(loss_mask, breakdown, source_ids, phase_ids, output_tensor):
    """Bridge's masked next-token loss, plus the per-source / per-phase breakdown."""
    losses = output_tensor.float()
    mask = loss_mask.view(losses.shape).float()
    per_sample = (losses * mask).sum(dim=-1)
    tokens = mask.sum(dim=-1)
    if breakdown is not None:
        breakdown.add(per_sample, tokens, source_ids, phase_ids)
    loss_sum = per_sample.sum()
    num_tokens = tokens.sum().to(torch.int)
    if torch.isnan(loss_sum):
        raise FloatingPointError(f"NaN in the next-token loss on rank {torch.distributed.get_rank()}")
    return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach().clone(), num_tokens.float()])}


def _stage_flags(model) -> tuple[bool, bool]:
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()


def make_ntp_forward_step(breakdown: LossBreakdown | None = None):
    """A Bridge forward step ``(state, data_iterator, model)`` for next-token training with a loss breakdown."""

    def ntp_forward_step(state, data_iterator: Iterable, model, return_schedule_plan: bool = False):
        first, last = _stage_flags(model)
        batch = next(data_iterator) if (first or last) else {}
        tokens = batch.get("tokens") if first else None
        position_ids = batch.get("position_ids") if first else None
        labels = batch.get("labels") if last else None
        loss_mask = batch.get("loss_mask") if last else None
        to_device = (lambda t: t.cuda(non_blocking=True)) if torch.cuda.is_available() else (lambda t: t)
        tokens, position_ids, labels, loss_mask = (
            to_device(t) if t is not None else None for t in (tokens, position_ids, labels, loss_mask)
        )
        output = model(tokens, position_ids, None, labels=labels)
        source_ids = batch.get("dataset_id") if last else None
        phase_ids = batch.get("phase") if last else None
        return output, partial(masked_token_loss, loss_mask, breakdown, source_ids, phase_ids)

    return ntp_forward_step
