"""Generation from a model trained with sequence parallelism (TP=2): SP is off while generating, restored after.

A sequence-parallel model cannot decode (one token per row does not split over TP ranks), so
:func:`~nemo_smartpt.rlp.megatron.rollout.generation_mode` turns every sequence-parallel flag off and restores each one. The
CPU layer spec cannot be built with sequence parallelism, so the model is built without it and switched on with
megatron-core's own ``set_model_to_sequence_parallel`` (what a sequence-parallel build sets); training forwards with
SP need reduce-scatter, which gloo lacks, so only generation is run here. Both samplers must then reproduce the
single-process greedy thoughts.
"""

from __future__ import annotations

import pytest
import torch

from nemo_smartpt.testing.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

PROMPTS = [[5, 9, 33, 7, 11, 40, 2, 18, 90, 3, 66, 12], [64, 2, 17, 88, 31, 9, 9, 101, 4, 57]]
STOP = (5, 6)


def _greedy(sampler_cls, model, **kwargs):
    sampler = sampler_cls(8, STOP, temperature=1.0, greedy=True, **kwargs)
    return [g.thoughts for g in sampler.generate_groups(model, PROMPTS, 3)]


def _flags(model) -> dict:
    attrs = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")
    found = {(name, a): getattr(m, a, None) for name, m in model.named_modules() for a in attrs}
    return {key: value for key, value in found.items() if isinstance(value, bool)}


def _reference(rank, world_size, state_path):
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel

    init_model_parallel(1, 1, seed=11)
    model = build_tiny_gpt(TinyGPTSpec(vocab_size=128, seq_length=64))
    torch.save({k: v.clone() for k, v in model.state_dict().items() if v is not None}, state_path)
    return _greedy(KVCacheSampler, model)


def _sequence_parallel_tp2(rank, world_size, state_path):
    from megatron.core.transformer.utils import set_model_to_sequence_parallel

    from nemo_smartpt.rlp.megatron.dynamic_rollout import DynamicEngineSampler
    from nemo_smartpt.rlp.megatron.rollout import KVCacheSampler
    from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt, init_model_parallel, load_full_state_dict
    from nemo_smartpt.testing.paged_attention import install_reference_paged_attention

    init_model_parallel(2, 1, seed=99)
    spec = TinyGPTSpec(vocab_size=128, seq_length=64)
    model = build_tiny_gpt(spec)
    load_full_state_dict(model, torch.load(state_path), spec.num_layers)
    set_model_to_sequence_parallel(model, True)
    flags = _flags(model)
    assert model.config.sequence_parallel and any(flags.values())
    cached = _greedy(KVCacheSampler, model)
    with install_reference_paged_attention():
        engine = _greedy(DynamicEngineSampler, model, block_size_tokens=8, buffer_size_gb=0.01, max_prompt_tokens=32)
    restored = model.config.sequence_parallel and _flags(model) == flags
    return cached, engine, restored


def test_sequence_parallel_model_generates_like_the_single_process_model(tmp_path):
    state = str(tmp_path / "state.pt")
    (reference,) = run_distributed(_reference, 1, state, timeout=300)
    results = run_distributed(_sequence_parallel_tp2, 2, state, timeout=300)
    for cached, engine, restored in results:
        assert cached == reference
        assert engine == reference
        assert restored
