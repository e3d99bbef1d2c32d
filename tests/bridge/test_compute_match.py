"""The FLOP-matched baseline's model size from a Bridge model config equals what megatron-core builds."""

from __future__ import annotations

import pytest

from nemo_smartpt.bridge.compute import model_flops_spec
from nemo_smartpt.testing.megatron import TinyGPTSpec, build_tiny_gpt


@pytest.mark.parametrize(
    "spec",
    [
        TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4, family="llama", num_query_groups=1),
        TinyGPTSpec(num_layers=3, hidden_size=48, num_attention_heads=6, family="llama", ffn_hidden_size=80),
        TinyGPTSpec(num_layers=2, hidden_size=32, num_attention_heads=4),
    ],
    ids=["llama-mqa", "llama-gqa", "gpt"],
)
def test_config_parameter_count_equals_the_built_decoders_matrices(single_process_group, spec):
    model = build_tiny_gpt(spec)
    # The decoder's weight matrices (norms and biases are not in the 2N/6N count).
    matrices = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder.") and p.dim() == 2)
    got = model_flops_spec(model.config)
    assert got.num_params == matrices
    assert got.attn_dim == model.config.num_attention_heads * model.config.kv_channels
    assert got.num_attn_layers == spec.num_layers
