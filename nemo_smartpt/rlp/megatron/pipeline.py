"""RLP under pipeline parallelism: stage-to-stage generation and preparation before the schedule (arXiv 2510.01265).

Generation and the baseline forward are collective over the pipeline: each rank runs its own stage (its layers and
its own KV cache), hidden states go stage to stage with point-to-point sends on megatron's pipeline group, the last
stage computes logits and samples, and the sampled ids (and log-probs) are broadcast back to every stage, so every
stage feeds the same next token and keeps the same stop bookkeeping. With PP = 1 every helper here reduces to a plain
model call, which keeps the single-stage path bit-identical.

Inside Megatron's 1F1B schedule the stages are busy with their own p2p ordering, so a collective generation there
would deadlock. Under PP the whole step is therefore prepared *before* the schedule (:class:`PipelineFeed`, driven by
the callback's ``on_train_step_start``): the first stage reads this step's packed samples from the training dataset
in the order of Bridge's ``MegatronPretrainingSampler`` (global samples ``[c, c + global_batch)`` for
``consumed_train_samples`` c; DP rank r of D takes micro-batch k at ``c + k·mbs·D + r·mbs``), broadcasts them to its
pipeline group, and all stages prepare every micro-batch together. The forward step then pops the prepared batches in
order, still advancing Bridge's iterator on the ranks that read it and checking that its tokens are the prepared ones.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch


class RLPDataOrderError(RuntimeError):
    """The samples Bridge's iterator delivered differ from those prepared before the schedule."""


def pipeline_size() -> int:
    """Pipeline-parallel world size (1 when model parallelism is not initialised)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1
    return parallel_state.get_pipeline_model_parallel_world_size()


def model_device(gpt) -> torch.device:
    """The device of the stage's parameters (non-first stages have no embedding)."""
    return next(gpt.parameters()).device


def _last_stage_global_rank() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_pipeline_model_parallel_last_rank()


def broadcast_from_last_stage(tensor: torch.Tensor) -> torch.Tensor:
    """In place: every pipeline rank receives the last stage's ``tensor`` (same shape/dtype everywhere)."""
    from megatron.core import parallel_state

    torch.distributed.broadcast(
        tensor, src=_last_stage_global_rank(), group=parallel_state.get_pipeline_model_parallel_group()
    )
    return tensor


def broadcast_from_first_stage(tensor: torch.Tensor) -> torch.Tensor:
    """In place: every pipeline rank receives the first stage's ``tensor``."""
    from megatron.core import parallel_state

    torch.distributed.broadcast(
        tensor,
        src=parallel_state.get_pipeline_model_parallel_first_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return tensor


def stage_forward(gpt, input_ids: torch.Tensor, position_ids, attention_mask, **kwargs) -> torch.Tensor | None:
    """Forward ``[N, S]`` tokens through this rank's stage; the last stage returns the model output, others None.

    Non-first stages receive the previous stage's ``[S, N, H]`` hidden states (``pipeline_dtype``) and feed them in
    with ``set_input_tensor``; non-last stages send theirs on. All stages must call this with the same shapes (they
    know the same token ids: prompts are shared and sampled ids are broadcast).
    """
    if pipeline_size() == 1:
        return gpt(input_ids, position_ids, attention_mask, **kwargs)
    from megatron.core import parallel_state

    cfg = gpt.config
    if cfg.sequence_parallel:
        # generation_mode switches it off; a caller outside it would send sequence-split hidden states.
        raise NotImplementedError("stage-to-stage forwards need sequence_parallel off (use rollout.generation_mode)")
    dtype = cfg.pipeline_dtype or cfg.params_dtype
    group = parallel_state.get_pipeline_model_parallel_group()
    if not parallel_state.is_pipeline_first_stage():
        N, S = input_ids.shape
        hidden = torch.empty(S, N, cfg.hidden_size, dtype=dtype, device=input_ids.device)
        torch.distributed.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank(), group=group)
        gpt.set_input_tensor(hidden)
    out = gpt(input_ids, position_ids, attention_mask, **kwargs)
    if parallel_state.is_pipeline_last_stage():
        return out
    torch.distributed.send(
        out.to(dtype).contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank(), group=group
    )
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Preparation before the schedule


@dataclasses.dataclass
class PreparedMicrobatch:
    """One micro-batch prepared ahead of the schedule, with the tokens it came from (for the order check)."""

    tokens: torch.Tensor
    batch: dict[str, torch.Tensor]


def sampler_indices(consumed: int, microbatch: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> range:
    """Dataset indices of micro-batch ``microbatch`` of the step that starts at ``consumed`` samples on DP rank
    ``dp_rank`` (the order of Bridge's ``MegatronPretrainingSampler``, ``dataloader_type="single"``)."""
    start = consumed + microbatch * micro_batch_size * dp_size + dp_rank * micro_batch_size
    return range(start, start + micro_batch_size)


def _field(dataset, indices, key: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(dataset[i][key])) for i in indices])


class PipelineFeed:
    """Prepares all micro-batches of a step on every pipeline rank, then hands them to the forward step in order.

    Args:
        preparer: the run's :class:`~nemo_smartpt.rlp.megatron.prepare.RLPPreparer`.
        dataset: the training dataset Bridge built (indexable, items with ``tokens``/``labels``/``loss_mask``); it
            is read on the first pipeline stage only.
        seq_length: packed-sample length (the broadcast buffer shape).
        with_ntp: also carry labels and loss masks (the mixed objective).
    """

    def __init__(self, preparer, dataset, seq_length: int, with_ntp: bool = False):
        self.preparer = preparer
        self.dataset = dataset
        self.seq_length = seq_length
        self.with_ntp = with_ntp
        self.queue: collections.deque[PreparedMicrobatch] = collections.deque()

    def _read(self, consumed: int, num_micro: int, mbs: int, device) -> dict[str, torch.Tensor]:
        from megatron.core import parallel_state

        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        keys = ("tokens", "labels", "loss_mask") if self.with_ntp else ("tokens",)
        shape = (num_micro, mbs, self.seq_length)
        out = {
            "tokens": torch.zeros(shape, dtype=torch.long, device=device),
            "labels": torch.zeros(shape, dtype=torch.long, device=device),
            "loss_mask": torch.zeros(shape, dtype=torch.float32, device=device),
        }
        if parallel_state.is_pipeline_first_stage():
            if self.dataset is None:
                raise RLPDataOrderError("the first pipeline stage has no training dataset to read the step from")
            for k in range(num_micro):
                idx = sampler_indices(consumed, k, mbs, dp_rank, dp_size)
                for key in keys:
                    out[key][k] = _field(self.dataset, idx, key).to(out[key].dtype)
        for key in keys:
            broadcast_from_first_stage(out[key])
        return out

    def prepare_step(self, model, step: int, consumed: int, num_micro: int, micro_batch_size: int) -> None:
        """Collective over the pipeline group: prepare this step's ``num_micro`` micro-batches on every stage."""
        from megatron.core import parallel_state

        if self.queue:
            raise RLPDataOrderError(f"{len(self.queue)} prepared micro-batches of the previous step were not consumed")
        device = model_device(_first_chunk(model))
        data = self._read(consumed, num_micro, micro_batch_size, device)
        dp_rank = parallel_state.get_data_parallel_rank()
        for k in range(num_micro):
            tokens = data["tokens"][k].cpu()
            batch = self.preparer.prepare(
                tokens,
                model,
                step=step,
                microbatch=k,
                dp_rank=dp_rank,
                dp_size=parallel_state.get_data_parallel_world_size(),
                ntp_labels_bS=data["labels"][k] if self.with_ntp else None,
                ntp_loss_mask_bS=data["loss_mask"][k] if self.with_ntp else None,
                last_microbatch=k == num_micro - 1,
            )
            self.queue.append(PreparedMicrobatch(tokens, batch))

    def pop(self, data_iterator) -> dict[str, torch.Tensor]:
        """The next prepared batch; advances ``data_iterator`` (when this rank has one) and checks its tokens."""
        if not self.queue:
            raise RLPDataOrderError("no prepared micro-batch left: the schedule ran more micro-batches than prepared")
        item = self.queue.popleft()
        if data_iterator is not None:
            raw = next(data_iterator)
            if not torch.equal(raw["tokens"].cpu().long(), item.tokens):
                raise RLPDataOrderError(
                    "Bridge's iterator delivered other samples than those prepared before the schedule; RLP under PP "
                    "needs dataset.dataloader_type='single' (MegatronPretrainingSampler order)"
                )
        return item.batch


def _first_chunk(model):
    from nemo_smartpt.rlp.megatron.logprobs import unwrap_model

    return unwrap_model(model)


def stage_model(model) -> torch.nn.Module:
    """The unwrapped ``GPTModel`` of this rank: the whole model under PP = 1 (checked), this rank's stage under PP."""
    from nemo_smartpt.rlp.megatron.logprobs import require_single_stage, unwrap_model

    return unwrap_model(model) if pipeline_size() > 1 else require_single_stage(model)
