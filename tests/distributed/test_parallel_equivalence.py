"""TP=2 and PP=2 on two gloo processes give the losses and gradients of the single-process model.

The single-process (TP=1, PP=1) run saves its initial weights; each parallel run loads exactly those weights, sliced
to its shard and stage, and runs megatron-core's own ``get_forward_backward_func()`` schedule over the same two
micro-batches. Losses and every gradient shard are compared against the reference.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.megatron import TinyGPTSpec, assert_grads_match

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SPEC = TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128, seq_length=16)
MICRO_BATCH, NUM_MICRO = 2, 2


def _batches():
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, SPEC.vocab_size, (NUM_MICRO, MICRO_BATCH, SPEC.seq_length + 1), generator=gen)
    return [{"tokens": t[:, :-1].contiguous(), "labels": t[:, 1:].contiguous()} for t in tokens]


def _loss(loss_mask, output):
    losses = output.float() * loss_mask
    total = losses.sum()
    count = loss_mask.sum().to(torch.int)
    return total, count, {"lm loss": torch.stack([total.detach(), count.detach().float()])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    seq = batch["tokens"].shape[1]
    position_ids = torch.arange(seq).expand_as(batch["tokens"])
    causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]
    output = model(batch["tokens"], position_ids, causal, labels=batch["labels"])
    return output, partial(_loss, torch.ones_like(batch["labels"], dtype=torch.float))


def _run_schedule(model):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter(_batches()),
        model=[model],
        num_microbatches=NUM_MICRO,
        seq_length=SPEC.seq_length,
        micro_batch_size=MICRO_BATCH,
        forward_only=False,
    )
    return [d["lm loss"].tolist() for d in losses]


def _reference(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = build_tiny_gpt(SPEC)
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    losses = _run_schedule(model)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return losses, grads


def _parallel(rank, world_size, tp, pp, state_path):
    from megatron.core import parallel_state

    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel, load_full_state_dict, sharded_grads

    init_model_parallel(tp, pp, seed=99)  # a different seed: the weights must come from the reference
    model = build_tiny_gpt(SPEC)
    full = torch.load(state_path)
    load_full_state_dict(model, full, SPEC.num_layers)
    losses = _run_schedule(model)
    grads = sharded_grads(model, SPEC.num_layers)
    return losses, grads, parallel_state.is_pipeline_last_stage()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "state.pt"
    ((losses, grads),) = run_distributed(_reference, 1, str(path), timeout=300)
    return path, losses, grads


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_parallel_matches_single_process(reference, tp, pp):
    path, ref_losses, ref_grads = reference
    results = run_distributed(_parallel, 2, tp, pp, str(path), timeout=300)
    checked = set()
    for losses, grads, is_last in results:
        if is_last:
            assert len(losses) == NUM_MICRO
            torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
        else:
            assert losses == []
        checked |= assert_grads_match(grads, ref_grads, tp)
    assert checked == set(ref_grads), set(ref_grads) ^ checked
    assert any(is_last for *_, is_last in results)
