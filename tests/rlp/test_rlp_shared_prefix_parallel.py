"""rlp.shared_prefix_forward under TP=2 and PP=2 (two gloo processes) equals the per-row layout at TP=1/PP=1.

The reference process builds the tiny GPT in float64, prepares two RLP micro-batches with the real pipeline (positions,
KV-cache rollouts, EMA baseline; two groups each) and runs megatron-core's ``get_forward_backward_func()`` over the
PER-ROW layout. Each parallel run loads the same weights and batches and runs the schedule over the GROUPED layout
(one packed row per group, vocab-parallel loss under TP, packed hidden states sent stage to stage under PP with
``variable_seq_lengths``, as ``pretrain()`` configures it). Losses, every reported metric and every gradient shard
must match in float64.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from nemo_smartpt.rlp import RLPConfig, ThoughtLayout
from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.megatron import TinyGPTSpec, assert_grads_match

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SPEC = TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128, seq_length=40)
EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)
CFG = RLPConfig(num_rollouts=4, max_thought_tokens=6, min_context=3, max_context=12, seed=3)
NUM_MICRO = 2


def _model(tp: int, pp: int):
    from nemo_smartpt.testing.megatron import build_tiny_gpt, transformer_config

    config = transformer_config(SPEC, tp=tp, pp=pp, pipeline_dtype=torch.float64)
    model = build_tiny_gpt(SPEC, config=config).double()
    # On the live config, as the RLP callback does (the constructor's MoE check refuses it for the default dispatcher).
    model.config.variable_seq_lengths = True
    return model


def _run_schedule(model, batches):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_smartpt.rlp.megatron.step import rlp_forward_step

    losses = get_forward_backward_func()(
        forward_step_func=partial(rlp_forward_step, CFG),
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=SPEC.seq_length,  # shapes travel with the tensors (variable_seq_lengths)
        micro_batch_size=2,
        forward_only=False,
    )
    return [{k: v.tolist() for k, v in d.items()} for d in losses]


def _reference(rank, world_size, state_path, batch_path):
    from nemo_smartpt.rlp import ParamEMA
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer
    from nemo_smartpt.testing.megatron import init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = _model(1, 1)
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    ema = ParamEMA(0.5)
    ema.initialize(list(model.parameters()))
    with torch.no_grad():  # φ differs from θ, so S_ema really comes from the swapped-in weights
        ema.shadow = [s * 0.9 for s in ema.shadow]
    prep = RLPPreparer(CFG.validate(), LAYOUT, EOD, ema=ema)
    gen = torch.Generator().manual_seed(4)
    batches = []
    for mb in range(NUM_MICRO):
        tokens = torch.randint(0, 119, (1, 26), generator=gen)
        tokens[0, 12] = EOD  # two documents → two groups per micro-batch
        batches.append(prep.prepare(tokens, model, step=0, microbatch=mb))
    torch.save(batches, batch_path)
    per_row = [{k: v for k, v in b.items() if not k.startswith("sp_")} for b in batches]
    losses = _run_schedule(model, per_row)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return losses, grads, [int(b["num_groups"]) for b in batches], [tuple(b["sp_input_ids_RS"].shape) for b in batches]


def _parallel(rank, world_size, tp, pp, state_path, batch_path):
    from megatron.core import parallel_state

    from nemo_smartpt.testing.megatron import init_model_parallel, load_full_state_dict, sharded_grads

    init_model_parallel(tp, pp, seed=99)  # another seed: the weights must come from the reference
    model = _model(tp, pp)
    load_full_state_dict(model, torch.load(state_path), SPEC.num_layers)
    batches = torch.load(batch_path)
    assert all("sp_input_ids_RS" in b for b in batches)  # the grouped path runs first
    losses = _run_schedule(model, batches)
    grads = sharded_grads(model, SPEC.num_layers)
    model.zero_grad(set_to_none=True)
    per_row_losses = _run_schedule(model, [{k: v for k, v in b.items() if not k.startswith("sp_")} for b in batches])
    per_row = (per_row_losses, sharded_grads(model, SPEC.num_layers))
    return losses, grads, parallel_state.is_pipeline_last_stage(), per_row


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlp_shared_ref")
    ((losses, grads, groups, packed),) = run_distributed(_reference, 1, str(d / "s.pt"), str(d / "b.pt"), timeout=300)
    assert groups == [2, 2] and [shape[0] for shape in packed] == [2, 2]  # one packed row per group
    assert any(g.abs().sum() > 0 for g in grads.values())
    return d, losses, grads


def _assert_losses(got_losses, ref_losses, rtol, atol):
    assert [sorted(x) for x in got_losses] == [sorted(x) for x in ref_losses]
    for got, ref in zip(got_losses, ref_losses):
        for key in ref:
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(ref[key]), rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_grouped_forward_under_tp_and_pp_equals_per_row(reference, tp, pp):
    d, ref_losses, ref_grads = reference
    results = run_distributed(_parallel, 2, tp, pp, str(d / "s.pt"), str(d / "b.pt"), timeout=300)
    checked = set()
    for losses, grads, is_last, (row_losses, row_grads) in results:
        # Same parallel layout, grouped vs per-row: the float64 model agrees to rounding (the log-softmax is fp32).
        for (name, _, _, g, _), (_, _, _, r, _) in zip(grads, row_grads):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-13, msg=name)
        if is_last:
            _assert_losses(losses, row_losses, rtol=1e-9, atol=1e-12)
            # Against TP=1/PP=1 per-row: TP splits the fp32 vocab-parallel log-softmax, so fp32 tolerances.
            _assert_losses(losses, ref_losses, rtol=1e-5, atol=1e-6)
        else:
            assert losses == [] and row_losses == []
        checked |= assert_grads_match(grads, ref_grads, tp, rtol=1e-4, atol=1e-7)
    assert checked == set(ref_grads), set(ref_grads) ^ checked
