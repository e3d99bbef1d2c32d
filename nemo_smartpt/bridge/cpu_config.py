"""Adapt any Bridge ``ConfigContainer`` to a machine without CUDA: the one place that decides what a CPU run changes.

A GPU recipe assumes Transformer Engine layers, bf16, fused kernels, NCCL, the distributed (sharded, fused) Adam and
overlapped communication. On a CPU each of those is either missing or refused, so this turns them into their plain
megatron-core counterparts and leaves everything else (architecture, learning rate, schedule shape) as the recipe
set it:

- layers: the local (non-TE) layer spec of megatron-core (``get_gpt_layer_local_spec`` via Bridge's
  ``local_layer_spec``), which keeps the recipe's normalisation (torch ``RMSNorm`` for ``normalization=RMSNorm``,
  also for the QK-norm when ``qk_layernorm``), gated-linear-unit MLP, RoPE and embedding tying;
- precision: fp32 parameters, gradients and pipeline tensors; no mixed-precision recipe; weights initialised on CPU;
- kernels: every fusion off (bias/dropout, bias/activation, masked softmax, RoPE, cross entropy, persistent layer
  norm, gradient accumulation), no CUDA graphs, no sequence parallelism (torch norms refuse it);
- optimizer: plain Adam (no distributed optimizer, no precision-aware optimizer, no overlap);
- communication: gloo; no communication overlap; data loading in the main process.
"""

from __future__ import annotations

from nemo_smartpt.overrides import OverrideError

MODEL_FLAGS_OFF = (
    "bf16",
    "fp16",
    "bias_dropout_fusion",
    "bias_activation_fusion",
    "masked_softmax_fusion",
    "gradient_accumulation_fusion",
    "persist_layer_norm",
    "apply_rope_fusion",
    "cross_entropy_loss_fusion",
    "use_transformer_engine_full_layer_spec",
    "use_transformer_engine_op_fuser",
    "sequence_parallel",
    "tp_comm_overlap",
    "fine_grained_activation_offloading",
)


class CPUConfigError(OverrideError):
    """A recipe that has no CPU counterpart (one line naming what stands in the way)."""


def adapt_to_cpu(cfg, recipe: str = "this recipe") -> None:
    """Change ``cfg`` (a Bridge ``ConfigContainer`` with a GPT model provider) in place to train on CPU."""
    import torch
    from megatron.bridge.models import gpt_provider
    from megatron.core.transformer.enums import AttnBackend

    model = cfg.model
    # Bridge's own spec choices all have the local spec as CPU counterpart; a recipe's custom spec (sliding-window
    # or heterogeneous layers, ...) may not, and silently replacing it would train a different architecture.
    te_specs = (
        gpt_provider.default_layer_spec,
        gpt_provider.transformer_engine_layer_spec,
        gpt_provider.transformer_engine_full_layer_spec,
        gpt_provider.local_layer_spec,
    )
    if model.transformer_layer_spec not in te_specs:
        spec = getattr(model.transformer_layer_spec, "__name__", type(model.transformer_layer_spec).__name__)
        raise CPUConfigError(
            f"recipe {recipe} uses its own layer spec ({spec}), which has no local (non-Transformer-Engine) "
            "counterpart: it needs a GPU"
        )
    model.transformer_layer_spec = gpt_provider.local_layer_spec
    model.transformer_impl = "local"
    model.attention_backend = AttnBackend.local
    if getattr(model, "context_parallel_size", 1) != 1:
        raise CPUConfigError(
            f"recipe {recipe}: context parallelism (model.context_parallel_size={model.context_parallel_size}) needs "
            "Transformer Engine attention; on CPU set model.context_parallel_size=1"
        )
    model.use_cpu_initialization = True
    model.params_dtype = torch.float32
    model.pipeline_dtype = torch.float32
    for flag in MODEL_FLAGS_OFF:
        if hasattr(model, flag):
            setattr(model, flag, False)
    if hasattr(model, "cross_entropy_fusion_impl"):
        model.cross_entropy_fusion_impl = "native"
    if hasattr(model, "cuda_graph_impl"):
        model.cuda_graph_impl = "none"
    if getattr(model, "recompute_granularity", None) is not None:
        model.recompute_granularity = None  # nothing to save on a tiny CPU model; some modes need TE
        model.recompute_method = None
        model.recompute_num_layers = None
        model.recompute_modules = None
    cfg.mixed_precision = None
    cfg.comm_overlap = None

    opt = cfg.optimizer
    opt.optimizer = "adam"
    opt.bf16 = opt.fp16 = False
    opt.params_dtype = torch.float32
    opt.use_distributed_optimizer = False
    opt.use_precision_aware_optimizer = False
    opt.main_grads_dtype = opt.main_params_dtype = torch.float32
    opt.exp_avg_dtype = opt.exp_avg_sq_dtype = torch.float32

    ddp = cfg.ddp
    ddp.use_distributed_optimizer = False
    ddp.overlap_grad_reduce = False
    ddp.overlap_param_gather = False
    ddp.use_megatron_fsdp = False
    ddp.data_parallel_sharding_strategy = "no_shard"
    ddp.grad_reduce_in_fp32 = True
    ddp.average_in_collective = False  # gloo has no ReduceOp.AVG: sum, then scale (Megatron's other path)

    cfg.dist.distributed_backend = "gloo"
    cfg.dist.use_megatron_fsdp = False
    if hasattr(cfg.dataset, "num_workers"):
        cfg.dataset.num_workers = 0
        cfg.dataset.pin_memory = False
        cfg.dataset.persistent_workers = False
