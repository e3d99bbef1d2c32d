"""megatron-core's ``HybridModel`` (the successor of ``GPTModel`` that Nemotron-H uses) on CPU, and its GPT twin.

A hybrid layer pattern of attention (``*``) and MLP (``-``) layers, ``*-*-``, is the same network as a two-layer GPT:
each GPT layer is an attention sublayer then an MLP sublayer, and the hybrid stack makes each of them a layer of its
own. With the GPT local spec's modules in both (megatron-core's hybrid specs are Transformer Engine only), a hybrid
model loaded with the GPT's weights computes the GPT's function; only the Mamba mixer (``M``) stays GPU-only. The
final norm of ``HybridStack`` is Transformer Engine's whatever the spec; the CPU runtime builds the torch norm there.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from nemo_smartpt.testing.megatron import TinyGPTSpec, transformer_config

_HYBRID_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")


def local_hybrid_stack_spec(normalization: str = "LayerNorm"):
    """``HybridStack`` spec whose attention and MLP layers are the GPT local spec's sublayers (no Transformer Engine)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import TransformerLayer

    gpt = get_gpt_layer_local_spec(normalization=normalization).submodules
    attention = dataclasses.replace(gpt, pre_mlp_layernorm=IdentityOp, mlp=IdentityOp, mlp_bda=IdentityFuncOp)
    mlp = dataclasses.replace(gpt, input_layernorm=IdentityOp, self_attention=IdentityOp, self_attn_bda=IdentityFuncOp)
    return ModuleSpec(
        module=HybridStack,
        submodules=HybridStackSubmodules(
            attention_layer=ModuleSpec(module=TransformerLayer, submodules=attention),
            mlp_layer=ModuleSpec(module=MLPLayer, submodules=mlp),
        ),
    )


def build_tiny_hybrid(spec: TinyGPTSpec, pattern: str | None = None):
    """``HybridModel`` with ``pattern`` (default: ``*-`` per GPT layer of ``spec``), the spec's family and sizes."""
    from megatron.core.models.hybrid.hybrid_model import HybridModel

    pattern = pattern or "*-" * spec.num_layers
    config = transformer_config(dataclasses.replace(spec, num_layers=len(pattern)))
    return HybridModel(
        config=config,
        hybrid_stack_spec=local_hybrid_stack_spec(config.normalization),
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.seq_length,
        hybrid_layer_pattern=pattern,
        share_embeddings_and_output_weights=spec.share_embeddings,
        position_embedding_type="rope" if spec.is_llama else "learned_absolute",
    )


def gpt_name(hybrid_name: str) -> str:
    """The GPT twin's parameter name of a ``*-``-pattern hybrid parameter (layer 2i → GPT layer i's attention,
    2i+1 → its MLP; the stack's ``final_norm`` → ``final_layernorm``)."""
    if hybrid_name.startswith("decoder.final_norm."):
        return hybrid_name.replace("final_norm", "final_layernorm", 1)
    match = _HYBRID_LAYER.match(hybrid_name)
    if not match:
        return hybrid_name
    return f"decoder.layers.{int(match.group(1)) // 2}.{match.group(2)}"


def load_gpt_weights(hybrid: torch.nn.Module, gpt: torch.nn.Module) -> None:
    """Copy the GPT twin's weights into the hybrid model; every parameter of both is used exactly once."""
    source = dict(gpt.named_parameters())
    used = set()
    with torch.no_grad():
        for name, param in hybrid.named_parameters():
            twin = gpt_name(name)
            param.copy_(source[twin])
            used.add(twin)
    missing = set(source) - used
    if missing:
        raise ValueError(f"GPT parameters with no place in the hybrid model: {sorted(missing)}")
