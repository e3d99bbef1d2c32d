"""TP=2 and PP=2 on two gloo processes: RLP log-probs, loss and gradients equal the single-process model's.

The reference process builds the tiny GPT, saves its weights, and prepares two RLP micro-batches with the real
pipeline (positions, KV-cache rollouts, EMA baseline), padded to one fixed shape as PP requires. Each parallel run
loads exactly those weights and batches and runs megatron-core's ``get_forward_backward_func()`` with the RLP forward
step; losses, reporting pairs and every gradient shard must match. Under TP=2 the vocab-parallel log-probs of the
first batch are compared too, greedy KV-cache rollouts equal TP=1's, and both TP ranks sample identical thoughts.
TP=2 runs on both architecture families of the tiny model: GPT-2 style, and Llama style (RoPE, grouped-query
attention with one KV head per TP rank, SwiGLU whose gate and up projections are split per rank, RMSNorm, untied
output layer).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from nemo_smartpt.rlp import RLPConfig, ThoughtLayout
from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.megatron import TinyGPTSpec, assert_grads_match

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SPECS = {
    family: TinyGPTSpec(
        num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=128, seq_length=32, family=family
    )
    for family in ("gpt", "llama")
}
EOD = 127
LAYOUT = ThoughtLayout(prompt_ids=(120,), think_open_ids=(121,), think_close_ids=(122,), pad_id=0)
# A 5-position logits chunk: the chunked, gathered-positions log-probs run over several chunks under TP=2 too.
# The per-row forward with fixed pipeline shapes; the grouped one: test_rlp_shared_prefix_parallel.py.
CFG = RLPConfig(
    num_rollouts=4,
    max_thought_tokens=6,
    min_context=3,
    max_context=12,
    seed=3,
    logits_chunk_tokens=5,
    shared_prefix_forward=False,
)
LENGTH, NUM_MICRO = 24, 2


def _run_schedule(model, batches, forward_only=False):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_smartpt.rlp.megatron.step import rlp_forward_step

    losses = get_forward_backward_func()(
        forward_step_func=partial(rlp_forward_step, CFG),
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=LENGTH,
        micro_batch_size=CFG.num_rollouts,  # one document per micro-batch → B = 1 group of G rows
        forward_only=forward_only,
    )
    return [{k: v.tolist() for k, v in d.items()} for d in losses]


def _reference(rank, world_size, family, state_path, batch_path):
    from nemo_smartpt.rlp import ParamEMA
    from nemo_smartpt.rlp.megatron.prepare import RLPPreparer, pad_prepared_length
    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = build_tiny_gpt(SPECS[family])
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    ema = ParamEMA(0.5)
    ema.initialize(list(model.parameters()))
    with torch.no_grad():  # make φ differ from θ so S_ema really comes from the swapped-in weights
        ema.shadow = [s * 0.9 for s in ema.shadow]
    prep = RLPPreparer(CFG.validate(), LAYOUT, EOD, ema=ema)
    gen = torch.Generator().manual_seed(4)
    batches = []
    for mb in range(NUM_MICRO):
        tokens = torch.randint(0, 119, (1, 14), generator=gen)  # one document: no EOD inside
        batches.append(pad_prepared_length(prep.prepare(tokens, model, step=0, microbatch=mb), LENGTH))
    torch.save(batches, batch_path)
    with torch.no_grad():
        from nemo_smartpt.rlp.megatron.logprobs import vocab_parallel_logprobs
        from nemo_smartpt.rlp.megatron.step import rlp_forward

        logp = vocab_parallel_logprobs(rlp_forward(batches[0], model), batches[0]["labels_NL"], CFG.temperature)
    greedy = _greedy_rollouts(model)
    losses = _run_schedule(model, batches)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return losses, grads, (logp, greedy), prep.counters.prefills


def _greedy_rollouts(model):
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler

    sampler = KVCacheSampler(max_new_tokens=6, stop_ids=(122,), greedy=True)
    return [g.thoughts for g in sampler.generate_groups(model, [[5, 9, 33, 7], [64, 2]], 3)]


def _sampled_rollouts(model):
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler

    sampler = KVCacheSampler(max_new_tokens=6, stop_ids=(122,), temperature=0.7)
    groups = sampler.generate_groups(model, [[5, 9, 33, 7], [64, 2]], 4, torch.Generator().manual_seed(8))
    return [g.thoughts for g in groups]


def _parallel(rank, world_size, family, tp, pp, state_path, batch_path):
    from megatron.core import parallel_state

    from nemo_smartpt.rlp.megatron.logprobs import vocab_parallel_logprobs
    from nemo_smartpt.rlp.megatron.step import logprobs_from_logits, rlp_forward
    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel, load_full_state_dict, sharded_grads

    spec = SPECS[family]
    init_model_parallel(tp, pp, seed=99)  # a different seed: the weights must come from the reference
    model = build_tiny_gpt(spec)
    load_full_state_dict(model, torch.load(state_path), spec.num_layers)
    batches = torch.load(batch_path)
    logp = None
    if pp == 1:
        with torch.no_grad():
            logp = vocab_parallel_logprobs(rlp_forward(batches[0], model), batches[0]["labels_NL"], CFG.temperature)
            # Logits only at the scored positions, in chunks, equal the full-logits path on every TP rank.
            selected = rlp_forward(batches[0], model, CFG)
            full = logprobs_from_logits(CFG, batches[0], rlp_forward(batches[0], model))
        # Generation under TP: both ranks must draw the same tokens (same seed, gathered logits).
        logp = (logp, _greedy_rollouts(model), _sampled_rollouts(model), (selected, full))
    losses = _run_schedule(model, batches)
    grads = sharded_grads(model, spec.num_layers)
    return losses, grads, logp, parallel_state.is_pipeline_last_stage()


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The single-process run of each family, made once per module when a test first asks for it."""
    made: dict = {}

    def reference(family: str):
        if family not in made:
            d = tmp_path_factory.mktemp(f"rlp_ref_{family}")
            ((losses, grads, logp, prefills),) = run_distributed(
                _reference, 1, family, str(d / "s.pt"), str(d / "b.pt"), timeout=300
            )
            assert prefills == NUM_MICRO  # one group per micro-batch, one prefill per group
            assert losses[0]["rlp loss"][1] == CFG.num_rollouts  # eq. 8 counts thoughts: G per micro-batch
            made[family] = d, losses, grads, logp
        return made[family]

    return reference


@pytest.mark.parametrize(
    "family,tp,pp", [("gpt", 2, 1), ("gpt", 1, 2), ("llama", 2, 1)], ids=["tp2", "pp2", "llama-tp2"]
)
def test_rlp_loss_and_grads_match_single_process(references, family, tp, pp):
    d, ref_losses, ref_grads, (ref_logp, ref_greedy) = references(family)
    results = run_distributed(_parallel, 2, family, tp, pp, str(d / "s.pt"), str(d / "b.pt"), timeout=300)
    checked = set()
    if tp == 2:
        (_, greedy0, sampled0, _), (_, greedy1, sampled1, _) = results[0][2], results[1][2]
        assert greedy0 == greedy1 == ref_greedy
        assert sampled0 == sampled1
        for _, _, _, (selected, full) in (results[0][2], results[1][2]):
            assert selected.abs().sum() > 0
            torch.testing.assert_close(selected, full, rtol=1e-5, atol=1e-5)
    for losses, grads, logp, is_last in results:
        if logp is not None:
            torch.testing.assert_close(logp[0], ref_logp, rtol=1e-5, atol=1e-5)
        if is_last:
            assert [sorted(x) for x in losses] == [sorted(x) for x in ref_losses]
            for got, ref in zip(losses, ref_losses):
                for key in ref:
                    torch.testing.assert_close(
                        torch.tensor(got[key]), torch.tensor(ref[key]), rtol=1e-4, atol=1e-5, msg=key
                    )
        else:
            assert losses == []
        checked |= assert_grads_match(grads, ref_grads, tp)
    assert checked == set(ref_grads), set(ref_grads) ^ checked
    # The gradient is not trivially zero: the loss reached the weights.
    assert any(g.abs().sum() > 0 for g in ref_grads.values())
