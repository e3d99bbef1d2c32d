"""Megatron-Bridge ``ConfigContainer`` recipes for ``smartpt train``: our tiny GPT, and any Bridge recipe.

- ``cpu_tiny`` (:func:`cpu_pretrain_config`): Bridge's own offline recipe (``vanilla_gpt``, Megatron-LM's
  ``pretrain_gpt.py`` defaults) with a tiny model; trains on CPU in seconds, and in bf16 on a GPU.
- any other name (:func:`recipe_config`): a Bridge recipe function (:mod:`nemo_smartpt.bridge.recipe_lookup`), built
  from a local Hugging Face config when it needs one (:mod:`nemo_smartpt.bridge.hf_config`), optionally rescaled with
  ``shrink=tiny`` (:mod:`nemo_smartpt.bridge.shrink`).

On a machine without CUDA both go through :func:`nemo_smartpt.bridge.cpu_config.adapt_to_cpu` (local layer spec,
fp32, gloo, plain Adam, no fused kernels), the one place that decides what a CPU run changes. The model's vocabulary
is the tokenizer's, padded by Bridge for the final tensor-parallel size (``make_vocab_size_divisible_by`` x TP), so
``model.tensor_model_parallel_size=2`` works whatever the tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from nemo_smartpt.bridge.recipe_lookup import ALIASES, CPU_TINY, RecipeError, resolve_recipe


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
    """Vocabulary of the NullTokenizer used when no HF tokenizer is given (the last id is EOD); the model pads it to
    a multiple of ``make_vocab_size_divisible_by`` x TP."""
    make_vocab_size_divisible_by: int = 8
    """Megatron's per-TP-rank padding multiple of the vocabulary."""


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

    from nemo_smartpt.bridge.cpu_config import adapt_to_cpu

    model = model or TinyModelConfig()
    on_gpu = torch.cuda.is_available()
    cfg = vanilla_gpt_pretrain_1gpu_h100_bf16_config()
    cfg.model = GPTModelProvider(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        seq_length=model.seq_length,
        # None: Bridge takes the tokenizer's vocabulary and pads it for the final TP size (after overrides).
        vocab_size=None,
        make_vocab_size_divisible_by=model.make_vocab_size_divisible_by,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        pipeline_dtype=torch.bfloat16,
        share_embeddings_and_output_weights=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        # GPU: the local spec's fused kernels (adapt_to_cpu turns all fusions off on CPU).
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
        bf16=True,
        fp16=False,
        params_dtype=torch.bfloat16,
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
    cfg.mixed_precision = "bf16_mixed"
    if not on_gpu:
        adapt_to_cpu(cfg, CPU_TINY)
    return cfg


def build_recipe(name: str, model_config: str = "auto", allow_hub: bool = True):
    """Call the Bridge recipe ``name`` (not ``cpu_tiny``), its Hugging Face config served locally where possible.

    ``allow_hub=False`` fails at once (:class:`ModelConfigError`) instead of letting the recipe try the Hub."""
    from nemo_smartpt.bridge.hf_config import (
        ModelConfigError,
        missing_config_message,
        offline_hub_cache,
        recipe_hf_requests,
        resolve_model_configs,
    )

    qualified, fn = resolve_recipe(name)
    requests = recipe_hf_requests(fn)
    local = resolve_model_configs(requests, model_config)
    if local is None and requests and (_hub_offline() or not allow_hub):
        raise ModelConfigError(missing_config_message(name, requests))  # fail now, not after the loader's retries
    try:
        if local:
            for request, directory in local.items():
                print(f"[smartpt] recipe {name}: Hugging Face config of {request.repo_id} from {directory}")
            with offline_hub_cache(local):
                cfg = fn()
        else:
            cfg = fn()
    except (ValueError, OSError) as exc:
        if "Failed to load configuration" in str(exc) or "couldn't connect" in str(exc):
            raise ModelConfigError(missing_config_message(name, requests)) from None
        raise
    if local and model_config not in ("auto", "hub") and getattr(cfg.model, "hf_model_id", None):
        # Later Bridge look-ups (HF export next to checkpoints) then use the same local directory.
        cfg.model.hf_model_id = str(next(iter(local.values())))
    return qualified, cfg


def recipe_config(
    name: str,
    out_dir: str,
    vocab_size: int | None = None,
    seed: int = 1234,
    shrink: str = "none",
    model_config: str = "auto",
):
    """A Bridge recipe by name for ``smartpt train``, with our run directory, seed and tokenizer vocabulary.

    Args:
        name: a recipe function exported by ``megatron.bridge.recipes``, ``module:function`` or a short alias.
        out_dir: run directory (tensorboard under ``tb/``, checkpoints under ``checkpoints/``).
        vocab_size: the NullTokenizer vocabulary (the byte tokenizer's) or None to keep the recipe's tokenizer.
        seed: RNG seed.
        shrink: ``none`` or ``tiny`` (:mod:`nemo_smartpt.bridge.shrink`).
        model_config: where the recipe's Hugging Face config comes from (``auto``, ``hub`` or a directory).
    """
    from megatron.bridge.training.config import TokenizerConfig

    from nemo_smartpt.bridge.cpu_config import adapt_to_cpu
    from nemo_smartpt.bridge.shrink import SHRINK_LEVELS, ShrinkError, is_hybrid_mamba, shrink_recipe

    if shrink not in SHRINK_LEVELS:
        raise ShrinkError(f"shrink must be one of {', '.join(SHRINK_LEVELS)}, got {shrink!r}")
    on_gpu = torch.cuda.is_available()
    if on_gpu or shrink != "none":
        _, cfg = build_recipe(name, model_config)
    else:
        # On CPU without shrink the answer is "add shrink=tiny" (or, for a hybrid Mamba recipe, "GPU only"): build
        # the recipe only to tell the two apart, and never wait for the Hub for it.
        try:
            _, cfg = build_recipe(name, model_config, allow_hub=False)
        except RecipeError:
            raise
        except Exception:
            cfg = None
    if not on_gpu and cfg is not None and is_hybrid_mamba(cfg.model):
        raise ShrinkError(
            f"recipe {name} builds a hybrid Mamba model ({type(cfg.model).__name__}): Mamba layers need mamba-ssm "
            "kernels on a GPU, so it runs on a GPU node (NGC container) only"
        )
    if not on_gpu and shrink == "none":
        raise RecipeError(
            f"recipe {name} is a GPU recipe (full size, Transformer Engine, bf16) and this machine has no CUDA: "
            "add shrink=tiny to train the same architecture at CPU size (or use recipe=cpu_tiny)"
        )
    if shrink == "tiny":
        sizes = shrink_recipe(cfg, name)
        print(f"[smartpt] shrink=tiny: {name} at {sizes}")
    if not on_gpu:
        adapt_to_cpu(cfg, name)
    cfg.logger.tensorboard_dir = os.path.join(out_dir, "tb")
    cfg.checkpoint.save = cfg.checkpoint.load = os.path.join(out_dir, "checkpoints")
    cfg.rng.seed = seed
    if vocab_size is not None:
        cfg.tokenizer = TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=vocab_size)
    return cfg


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


__all__ = ["ALIASES", "CPU_TINY", "TinyModelConfig", "build_recipe", "cpu_pretrain_config", "recipe_config"]
