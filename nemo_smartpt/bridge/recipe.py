"""Megatron-Bridge ``ConfigContainer`` recipes: a tiny GPT that trains on CPU, and the same shape for the cluster.

We start from Bridge's own offline recipe (``vanilla_gpt``, Megatron-LM's ``pretrain_gpt.py`` defaults) and change only
what the target needs. On a machine without CUDA that means: fp32 instead of bf16, the local (non-Transformer-Engine)
layer spec, a plain (non-distributed, unfused) Adam, gloo instead of NCCL, and dataloader workers off. Everything else
is the host's default, so a CPU run exercises the same code paths as a GPU run wherever the CPU allows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class TinyModelConfig:
    """Sizes of the CPU model (megatron-core ``GPTModel``); the defaults train a few iterations in seconds."""

    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width."""
    num_attention_heads: int = 4
    """Attention heads (must divide hidden_size and be divisible by TP)."""
    seq_length: int = 64
    """Tokens per sample."""
    vocab_size: int = 256
    """Vocabulary of the NullTokenizer used when no HF tokenizer is given (the last id is EOD)."""


def cpu_pretrain_config(
    dataset,
    out_dir: str,
    model: TinyModelConfig | None = None,
    train_iters: int = 10,
    global_batch_size: int = 8,
    micro_batch_size: int = 2,
    lr: float = 3e-3,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    seed: int = 1234,
    eval_interval: int | None = None,
    save_interval: int | None = None,
):
    """A Bridge ``ConfigContainer`` for a tiny GPT fed by ``dataset`` (a ``DatasetProvider`` or dataset config).

    Args:
        dataset: what goes into ``ConfigContainer.dataset``.
        out_dir: run directory (tensorboard logs under ``tb/``, checkpoints under ``checkpoints/``).
        model: model sizes.
        train_iters: optimizer steps.
        global_batch_size / micro_batch_size: as in Megatron.
        lr: peak learning rate (constant after a one-step warm-up; tiny runs need no decay).
        tensor_parallel / pipeline_parallel: model-parallel sizes.
        seed: RNG seed for weights, dropout and data order.
        eval_interval: run validation every N steps (None or 0: no validation).
        save_interval: checkpoint every N steps (None: no checkpoints).
    """
    from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec
    from megatron.bridge.recipes.gpt.h100.vanilla_gpt import vanilla_gpt_pretrain_1gpu_h100_bf16_config
    from megatron.bridge.training.config import OptimizerConfig, SchedulerConfig, TokenizerConfig

    model = model or TinyModelConfig()
    on_gpu = torch.cuda.is_available()
    cfg = vanilla_gpt_pretrain_1gpu_h100_bf16_config()
    cfg.model = GPTModelProvider(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        seq_length=model.seq_length,
        vocab_size=model.vocab_size,
        make_vocab_size_divisible_by=max(tensor_parallel, 1) * 8,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        pipeline_dtype=torch.float32 if not on_gpu else torch.bfloat16,
        share_embeddings_and_output_weights=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=not on_gpu,
        bias_dropout_fusion=on_gpu,
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        transformer_layer_spec=local_layer_spec,
    )
    cfg.train.train_iters = train_iters
    cfg.train.global_batch_size = global_batch_size
    cfg.train.micro_batch_size = micro_batch_size
    cfg.validation.eval_interval = eval_interval if eval_interval else None
    cfg.validation.eval_iters = 2 if eval_interval else 0
    cfg.optimizer = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=lr,
        weight_decay=0.0,
        clip_grad=1.0,
        bf16=on_gpu,
        fp16=False,
        params_dtype=torch.bfloat16 if on_gpu else torch.float32,
        use_distributed_optimizer=False,
    )
    cfg.scheduler = SchedulerConfig(lr_decay_style="constant", lr_warmup_iters=1, start_weight_decay=0.0)
    cfg.scheduler.end_weight_decay = 0.0
    cfg.ddp.use_distributed_optimizer = False
    cfg.ddp.grad_reduce_in_fp32 = True
    cfg.ddp.check_for_nan_in_grad = True
    cfg.dataset = dataset
    cfg.tokenizer = TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=model.vocab_size)
    cfg.logger.log_interval = 1
    cfg.logger.tensorboard_dir = os.path.join(out_dir, "tb")
    cfg.checkpoint.save = os.path.join(out_dir, "checkpoints") if save_interval else None
    cfg.checkpoint.save_interval = save_interval
    cfg.checkpoint.load = cfg.checkpoint.save
    cfg.rng.seed = seed
    cfg.dist.distributed_backend = "nccl" if on_gpu else "gloo"
    cfg.mixed_precision = "bf16_mixed" if on_gpu else None
    return cfg


# Cluster recipes (GPU: Transformer Engine spec, bf16, NCCL); each builds offline from Bridge's own recipe modules.
CLUSTER_RECIPES = {
    "vanilla_gpt": "megatron.bridge.recipes.gpt.h100.vanilla_gpt:vanilla_gpt_pretrain_1gpu_h100_bf16_config",
    # The talk's hybrid Mamba-2 case (Nemotron-Nano-12B-v2); needs mamba-ssm, i.e. the NGC container on a GPU.
    "nemotron_nano_12b_v2": (
        "megatron.bridge.recipes.nemotronh.h100.nemotron_nano_v2:nemotron_nano_12b_v2_pretrain_4gpu_h100_bf16_config"
    ),
}


def recipe_config(name: str, out_dir: str, vocab_size: int | None = None, seed: int = 1234):
    """A Bridge cluster recipe by name, with our run directory, seed and (optionally) a NullTokenizer vocabulary."""
    import importlib

    from megatron.bridge.training.config import TokenizerConfig

    if name not in CLUSTER_RECIPES:
        raise ValueError(f"unknown recipe {name!r} (known: cpu_tiny, {', '.join(CLUSTER_RECIPES)})")
    if not torch.cuda.is_available():
        raise RuntimeError(f"recipe {name!r} is a GPU recipe (bf16, Transformer Engine); on CPU use recipe=cpu_tiny")
    module, function = CLUSTER_RECIPES[name].split(":")
    cfg = getattr(importlib.import_module(module), function)()
    cfg.logger.tensorboard_dir = os.path.join(out_dir, "tb")
    cfg.checkpoint.save = cfg.checkpoint.load = os.path.join(out_dir, "checkpoints")
    cfg.rng.seed = seed
    if vocab_size is not None:
        cfg.tokenizer = TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=vocab_size)
    return cfg
