"""Tiny Megatron models and model-parallel set-up for tests, benchmarks and the CPU quickstart.

The model is megatron-core's own ``GPTModel`` with the local (non-Transformer-Engine) layer spec, fp32, CPU
initialisation. ``load_full_state_dict`` copies a single-process (TP=1, PP=1) state dict into a tensor- and/or
pipeline-parallel model by slicing along each parameter's ``partition_dim`` and renumbering pipeline-stage layers,
so a parallel run can be compared against the single-process reference with identical weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TinyGPTSpec:
    """Sizes of the tiny GPT used on CPU (defaults give ~60k parameters)."""

    num_layers: int = 2
    hidden_size: int = 32
    num_attention_heads: int = 4
    vocab_size: int = 128
    seq_length: int = 32
    ffn_hidden_size: int | None = None
    share_embeddings: bool = False
    family: str = "gpt"
    """``gpt``: learned absolute positions, LayerNorm, a GeLU MLP with biases. ``llama``: the Llama 3 / Qwen 3
    shape: RoPE, grouped-query attention (``num_query_groups``), SwiGLU, RMSNorm, no linear biases (with
    ``share_embeddings=False``, the untied output layer)."""
    num_query_groups: int | None = None
    """KV heads of the ``llama`` family (None: half the attention heads)."""

    def __post_init__(self):
        if self.family not in ("gpt", "llama"):
            raise ValueError(f"TinyGPTSpec.family must be 'gpt' or 'llama', got {self.family!r}")

    @property
    def is_llama(self) -> bool:
        return self.family == "llama"


def family_overrides(spec: TinyGPTSpec) -> dict:
    """TransformerConfig fields of the spec's architecture family."""
    if not spec.is_llama:
        return {}
    import torch.nn.functional as F

    return dict(
        num_query_groups=spec.num_query_groups or max(1, spec.num_attention_heads // 2),
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
    )


def init_model_parallel(tp: int = 1, pp: int = 1, seed: int = 1234) -> None:
    """Initialise megatron's model-parallel groups on an already-initialised process group and seed every RNG."""
    from megatron.core import parallel_state, tensor_parallel

    if not torch.distributed.is_initialized():
        raise RuntimeError("init_model_parallel needs torch.distributed initialised (use run_distributed)")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_single_process(seed: int = 1234, backend: str = "gloo") -> None:
    """A world of one (gloo by default) and megatron's model-parallel state (TP = PP = 1) seeded with ``seed``:
    what a benchmark or a one-process check needs before building a model."""
    import os

    # Port 0, never an inherited one (the caller's own group may hold it): the store binds what the OS assigns, and
    # a world of one has no other process to tell (the same as ``smartpt train`` without torchrun).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    torch.distributed.init_process_group(backend, rank=0, world_size=1)
    init_model_parallel(1, 1, seed=seed)


def single_process_tiny_gpt(spec: TinyGPTSpec, seed: int = 1234):
    """The tiny GPT in a world of one: the CPU runtime (a no-op on a GPU), the process group and model-parallel state
    (:func:`init_single_process`), then the model. What a benchmark script needs before its first forward."""
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    init_single_process(seed=seed)
    return build_tiny_gpt(spec)


def transformer_config(spec: TinyGPTSpec, tp: int = 1, pp: int = 1, **overrides):
    from megatron.core.transformer import TransformerConfig

    kwargs = dict(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        ffn_hidden_size=spec.ffn_hidden_size,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        use_cpu_initialization=True,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
    )
    kwargs.update(family_overrides(spec))
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def build_tiny_gpt(spec: TinyGPTSpec = TinyGPTSpec(), config=None, pre_process=None, post_process=None):
    """Build megatron-core's ``GPTModel`` (local layer spec) for the current pipeline stage."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if config is None:
        config = transformer_config(
            spec,
            tp=parallel_state.get_tensor_model_parallel_world_size(),
            pp=parallel_state.get_pipeline_model_parallel_world_size(),
        )
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(),
        vocab_size=spec.vocab_size,
        max_sequence_length=spec.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=spec.share_embeddings,
        position_embedding_type="rope" if spec.is_llama else "learned_absolute",
    )


_LAYER = re.compile(r"^(.*decoder\.layers\.)(\d+)(\..*)$")


def global_name(local_name: str, layers_per_stage: int, pp_rank: int) -> str:
    """Map a pipeline stage's parameter name to the name it has in the single-stage model."""
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    return f"{match.group(1)}{int(match.group(2)) + pp_rank * layers_per_stage}{match.group(3)}"


def _glu_fc1(model: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` is the first projection of a gated MLP (SwiGLU): ``[gate; up]`` along its output dimension."""
    gated = bool(getattr(getattr(model, "config", None), "gated_linear_unit", False))
    return gated and name.endswith("mlp.linear_fc1.weight")


def tp_slice(full: torch.Tensor, partition_dim: int | None, tp_rank: int, tp_size: int, glu: bool = False):
    """The part of a full (TP=1) tensor that TP rank ``tp_rank`` holds.

    A gated MLP's first projection is ``[gate; up]`` at TP=1, and each TP rank holds ``[gate_r; up_r]`` (its slice of
    both halves, as megatron-core's sharded checkpoint factory for GLU describes it), not a contiguous chunk.
    """
    if partition_dim is None or tp_size == 1:
        return full
    if glu:
        gate, up = torch.chunk(full, 2, dim=partition_dim)
        parts = [torch.chunk(half, tp_size, dim=partition_dim)[tp_rank] for half in (gate, up)]
        return torch.cat(parts, dim=partition_dim)
    return torch.chunk(full, tp_size, dim=partition_dim)[tp_rank]


def shard_of(full: torch.Tensor, param: torch.nn.Parameter, tp_rank: int, tp_size: int, glu: bool = False):
    """The slice of a full (TP=1) tensor that this rank's parameter holds."""
    partition_dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
    return tp_slice(full, partition_dim, tp_rank, tp_size, glu)


def load_full_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor], num_layers: int) -> None:
    """Copy a TP=1/PP=1 state dict into this rank's (possibly TP/PP-sharded) model, exactly."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    per_stage = num_layers // pp_size
    with torch.no_grad():
        for name, param in model.named_parameters():
            source = full[global_name(name, per_stage, pp_rank)]
            param.copy_(shard_of(source, param, tp_rank, tp_size, glu=_glu_fc1(model, name)))


def sharded_grads(model: torch.nn.Module, num_layers: int) -> list[tuple[str, int | None, int, torch.Tensor, bool]]:
    """This rank's gradients as ``(single-process name, partition_dim or None, tp_rank, grad, gated fc1)``."""
    from megatron.core import parallel_state

    per_stage = num_layers // parallel_state.get_pipeline_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    return [
        (
            global_name(name, per_stage, pp_rank),
            p.partition_dim if getattr(p, "tensor_model_parallel", False) else None,
            tp_rank,
            p.grad.clone(),
            _glu_fc1(model, name),
        )
        for name, p in model.named_parameters()
    ]


def assert_grads_match(rank_grads, reference: dict[str, torch.Tensor], tp: int, rtol=1e-4, atol=1e-6) -> set[str]:
    """Each rank's gradient shard equals the matching slice of the single-process gradient; returns names checked."""
    checked = set()
    for name, partition_dim, tp_rank, grad, glu in rank_grads:
        expected = tp_slice(reference[name], partition_dim, tp_rank, tp, glu)
        torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
        checked.add(name)
    return checked
