"""The lm-eval adapter against independent references on the same Megatron model.

- ``loglikelihood`` (batched, right-padded, sorted by lm-eval's Collator) equals a float64 log-softmax over one
  unpadded sequence at a time; ``is_greedy`` equals a float64 argmax check;
- ``loglikelihood_rolling`` equals the float64 sum over every token of a document after EOD;
- ``generate_until`` equals a one-row-at-a-time greedy loop (float64 argmax), stop strings cut as lm-eval does;
- under TP=2 (two gloo ranks, the same weights sharded) every result equals the TP=1 results.
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from nemo_smartpt.reasoning.tokenizer import ByteTokenizer
from nemo_smartpt.testing.distributed import run_distributed
from nemo_smartpt.testing.megatron import TinyGPTSpec

SPEC = TinyGPTSpec(vocab_size=264, seq_length=48, hidden_size=32, num_layers=2)  # byte ids 0-257 fit
PAIRS = [
    ("The capital of Kavenlo is", " Dunmira."),
    ("x", " y"),
    ("A much longer context that will certainly need left truncation because it is long " * 2, " tail end"),
    ("Question: what is 7 + 5?\nAnswer:", " 12"),
    ("", "starts without context"),
    ("Trailing space context ", "continuation"),
]
ROLLING = ["a short document", "abc " * 20]  # the second one spans two windows of 48 tokens
GEN_CONTEXTS = ["Once upon", "7 + 5 =", "The river flows through the valley and"]


@pytest.fixture
def tiny_world_model(single_process_group):
    """A tiny megatron-core GPT over the byte tokenizer's ids (TP=1, fp32, CPU)."""
    from nemo_smartpt.testing.megatron import build_tiny_gpt

    return build_tiny_gpt(SPEC)


def _instances(kind, args_list, gen_kwargs=None):
    out = []
    for i, args in enumerate(args_list):
        args = args if gen_kwargs is None else (args, gen_kwargs)
        out.append(Instance(request_type=kind, doc={}, arguments=args, idx=i))
    return out


def _float64_logp(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids]), torch.arange(len(ids))[None], None)
    return torch.log_softmax(logits[0].double(), dim=-1)


def _reference_loglikelihood(lm, model, context, continuation):
    if context:
        ctx, cont = lm._encode_pair(context, continuation)
    else:
        ctx, cont = [lm.eot_token_id], lm.tok_encode(continuation)
    whole = (ctx + cont)[-(lm.max_length + 1) :]
    logp = _float64_logp(model, whole[:-1])
    positions = range(len(whole) - 1 - len(cont), len(whole) - 1)
    total = sum(float(logp[p, t]) for p, t in zip(positions, cont))
    greedy = all(int(logp[p].argmax()) == t for p, t in zip(positions, cont))
    return total, greedy


def _reference_greedy(lm, model, context, until, max_new):
    ids = lm.tok_encode(context)[-(lm.max_length - max_new) :]
    out = []
    for _ in range(max_new):
        token = int(_float64_logp(model, ids)[-1].argmax())
        ids.append(token)
        out.append(token)
        if token == lm.eot_token_id or any(s in lm.tok_decode(out) for s in until) or len(ids) >= lm.max_length:
            break
    text = lm.tok_decode(out)
    for s in until:
        text = text.split(s)[0]
    return text


def _results(model):
    from nemo_smartpt.evaluation.lm import SmartptLM

    lm = SmartptLM(model=model, tokenizer=ByteTokenizer(), batch_size=4)
    model.train()  # the adapter must switch to eval and back
    ll = lm.loglikelihood(_instances("loglikelihood", PAIRS))
    assert model.training
    rolling = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in ROLLING]))
    gen_kwargs = {"until": ["\n", "e"], "max_gen_toks": 12, "do_sample": False}
    gen = lm.generate_until(_instances("generate_until", GEN_CONTEXTS, gen_kwargs))
    return lm, ll, rolling, gen


def test_adapter_matches_float64_references(tiny_world_model):
    model = tiny_world_model
    lm, ll, rolling, gen = _results(model)
    model.eval()
    for (context, continuation), (logp, greedy) in zip(PAIRS, ll):
        ref_logp, ref_greedy = _reference_loglikelihood(lm, model, context, continuation)
        assert logp == pytest.approx(ref_logp, abs=1e-4), (context, continuation)
        assert greedy == ref_greedy
    short = lm.tok_encode(ROLLING[0])
    logp = _float64_logp(model, [lm.eot_token_id] + short[:-1])
    assert rolling[0] == pytest.approx(sum(float(logp[i, t]) for i, t in enumerate(short)), abs=1e-4)
    long_ids = lm.tok_encode(ROLLING[1])
    assert len(long_ids) > lm.max_length  # two windows, every token scored once
    first = _float64_logp(model, [lm.eot_token_id] + long_ids[: lm.max_length - 1])
    expected = sum(float(first[i, t]) for i, t in enumerate(long_ids[: lm.max_length]))
    rest = long_ids[lm.max_length :]
    tail_input = long_ids[len(long_ids) - lm.max_length - 1 : -1]
    second = _float64_logp(model, tail_input)
    expected += sum(float(second[lm.max_length - len(rest) + i, t]) for i, t in enumerate(rest))
    assert rolling[1] == pytest.approx(expected, abs=1e-3)
    for context, text in zip(GEN_CONTEXTS, gen):
        assert text == _reference_greedy(lm, model, context, ["\n", "e"], 12)


def test_adapter_rejects_sampling_and_a_missing_model(tiny_world_model):
    from nemo_smartpt.evaluation.errors import EvaluationError
    from nemo_smartpt.evaluation.lm import SmartptLM

    with pytest.raises(EvaluationError, match="run_dir"):
        SmartptLM()
    lm = SmartptLM(model=tiny_world_model, tokenizer=ByteTokenizer())
    with pytest.raises(EvaluationError, match="greedily"):
        lm.generate_until(_instances("generate_until", ["x"], {"until": ["\n"], "do_sample": True}))


def _tp2(rank, world_size, state_path):
    from nemo_smartpt.testing.megatron import build_tiny_gpt, init_model_parallel, load_full_state_dict

    init_model_parallel(2, 1, seed=99)  # another seed: the weights must come from the reference
    model = build_tiny_gpt(SPEC)
    load_full_state_dict(model, torch.load(state_path), SPEC.num_layers)
    _, ll, rolling, gen = _results(model)
    return ll, rolling, gen


@pytest.mark.slow
@pytest.mark.distributed
def test_tensor_parallel_two_equals_one(tiny_world_model, tmp_path):
    torch.save(tiny_world_model.state_dict(), tmp_path / "state.pt")
    _, ll, rolling, gen = _results(tiny_world_model)
    for ll2, rolling2, gen2 in run_distributed(_tp2, 2, str(tmp_path / "state.pt"), timeout=300):
        assert [g for _, g in ll2] == [g for _, g in ll]
        assert [lp for lp, _ in ll2] == pytest.approx([lp for lp, _ in ll], abs=1e-4)
        assert rolling2 == pytest.approx(rolling, abs=1e-4)
        assert gen2 == gen
