"""``shrink=tiny``: the same architecture as a recipe's model at a size a CPU trains in seconds.

What is kept: the layer types and every architectural switch the recipe's provider carries (RoPE and its base and
scaling, SwiGLU / gated linear units, RMSNorm and its epsilon, QK-norm, grouped-query attention, embedding tying,
biases, init std). What is rescaled (:func:`tiny_sizes`, pure arithmetic):

- layers: 2 (or fewer when the recipe has fewer);
- width: ``hidden_size`` 128, the FFN at the recipe's FFN/hidden ratio (rounded to a multiple of 8);
- attention: the recipe's GQA ratio (heads per KV group) kept, with at least 2 KV groups (so TP=2 splits them) and
  8 heads where the ratio allows; the head dimension keeps the recipe's ``heads x head_dim / hidden`` ratio (Qwen 3
  has 2: its heads are wider than its model), rounded to an even number for RoPE;
- sequence: 128 tokens; vocabulary: the tokenizer's, padded by Bridge (``make_vocab_size_divisible_by`` x TP);
- parallelism: one process (TP = PP = CP = 1); set ``model.tensor_model_parallel_size=2`` etc. under torchrun;
- run: 10 steps of 8 samples (micro-batch 2), warm-up 1 step, no periodic validation — override any of it.

Overrides apply after the shrink, so ``model.num_layers=4`` or ``train.train_iters=200`` still win. The device side
(local layer spec, fp32, gloo, plain Adam) is :func:`nemo_smartpt.bridge.cpu_config.adapt_to_cpu`'s, applied to
every recipe on a machine without CUDA; on a GPU a shrunk recipe keeps its Transformer Engine layers and bf16 (a
quick smoke test of the real stack).
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_smartpt.overrides import OverrideError

SHRINK_LEVELS = ("none", "tiny")
TINY_LAYERS = 2
TINY_HIDDEN = 128
TINY_HEADS = 8
TINY_MIN_GROUPS = 2
TINY_SEQ_LENGTH = 128
TINY_RUN = {"train_iters": 10, "global_batch_size": 8, "micro_batch_size": 2}


class ShrinkError(OverrideError):
    """The recipe's model cannot be shrunk (one line naming the recipe and why)."""


@dataclass(frozen=True)
class Sizes:
    """The sizes of a transformer that shrink changes."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, multiple * round(value / multiple))


def tiny_sizes(src: Sizes) -> Sizes:
    """``src`` at the tiny size, with its FFN ratio, GQA ratio and attention-width ratio kept."""
    if src.num_attention_heads % src.num_query_groups:
        raise ShrinkError(
            f"num_attention_heads={src.num_attention_heads} is not a multiple of "
            f"num_query_groups={src.num_query_groups}"
        )
    per_group = src.num_attention_heads // src.num_query_groups
    groups = max(TINY_MIN_GROUPS, TINY_HEADS // per_group)
    groups = min(groups, src.num_query_groups)
    heads = groups * per_group
    attention_width = src.num_attention_heads * src.kv_channels / src.hidden_size
    return Sizes(
        num_layers=min(TINY_LAYERS, src.num_layers),
        hidden_size=TINY_HIDDEN,
        ffn_hidden_size=_round_to(TINY_HIDDEN * src.ffn_hidden_size / src.hidden_size, 8),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=_round_to(attention_width * TINY_HIDDEN / heads, 2),
    )


def model_sizes(model) -> Sizes:
    """The :class:`Sizes` of a Bridge model provider (``ffn_hidden_size``/``kv_channels`` filled as Megatron does).

    A bare provider (``vanilla_gpt``: sizes left at 0 for the user to set) counts as Megatron's default shape at the
    tiny size: multi-head attention, FFN 4 x hidden, head dim hidden / heads."""
    if not model.hidden_size or not model.num_attention_heads:
        return Sizes(TINY_LAYERS, TINY_HIDDEN, 4 * TINY_HIDDEN, TINY_HEADS, TINY_HEADS, TINY_HIDDEN // TINY_HEADS)
    hidden, heads = int(model.hidden_size), int(model.num_attention_heads)
    return Sizes(
        num_layers=int(model.num_layers) or TINY_LAYERS,
        hidden_size=hidden,
        ffn_hidden_size=int(model.ffn_hidden_size or 4 * hidden),
        num_attention_heads=heads,
        num_query_groups=int(model.num_query_groups or heads),
        kv_channels=int(model.kv_channels or hidden // heads),
    )


def check_shrinkable(recipe: str, model) -> None:
    """A dense GPT-family provider (what the local layer spec can build); else one line naming what stands in the way."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    kind = type(model).__name__
    if is_hybrid_mamba(model):
        raise ShrinkError(
            f"recipe {recipe} builds a hybrid Mamba model ({kind}): Mamba layers need mamba-ssm kernels on a GPU, "
            "so it runs on a GPU node (NGC container) at full size; shrink=tiny covers GPT-family recipes "
            "(Llama, Qwen 3 dense, GPT)"
        )
    if not isinstance(model, GPTModelProvider):
        raise ShrinkError(f"recipe {recipe} builds a {kind}; shrink=tiny covers GPT-family recipes (GPTModelProvider)")
    if getattr(model, "num_moe_experts", None):
        raise ShrinkError(
            f"recipe {recipe} is a mixture-of-experts model ({model.num_moe_experts} experts); shrink=tiny covers "
            "dense GPT-family recipes (Llama, Qwen 3 dense, GPT)"
        )
    if getattr(model, "multi_latent_attention", False):
        raise ShrinkError(f"recipe {recipe} uses multi-latent attention; shrink=tiny covers dense GPT-family recipes")


def is_hybrid_mamba(model) -> bool:
    """A hybrid (Mamba + attention) model provider with Mamba layers."""
    from megatron.bridge.models.hybrid.hybrid_provider import HybridModelProvider

    if not isinstance(model, HybridModelProvider):
        return False
    pattern = getattr(model, "hybrid_layer_pattern", None) or getattr(model, "hybrid_override_pattern", None)
    return pattern is None or "M" in str(pattern)


def shrink_recipe(cfg, recipe: str) -> Sizes:
    """Rescale ``cfg`` (a Bridge ``ConfigContainer``) in place to the tiny size; returns the new model sizes."""
    model = cfg.model
    check_shrinkable(recipe, model)
    sizes = tiny_sizes(model_sizes(model))
    for name, value in vars(sizes).items():
        setattr(model, name, value)
    model.seq_length = TINY_SEQ_LENGTH
    if hasattr(cfg.dataset, "seq_length"):
        cfg.dataset.seq_length = TINY_SEQ_LENGTH
    # The tokenizer's vocabulary, padded by Bridge for the final TP (make_vocab_size_divisible_by x TP).
    model.vocab_size = None
    # The HF config no longer describes this model: Bridge must not export or look it up as that architecture.
    model.hf_model_id = None
    if hasattr(model, "hf_model_revision"):
        model.hf_model_revision = None
    if getattr(model, "mtp_num_layers", None):
        model.mtp_num_layers = None
    # One process: the recipe's layout is for its GPU count (e.g. TP=4 or CP=2); torchrun + overrides set a new one.
    model.tensor_model_parallel_size = model.pipeline_model_parallel_size = model.context_parallel_size = 1
    model.virtual_pipeline_model_parallel_size = None
    model.pipeline_model_parallel_layout = None
    model.sequence_parallel = False
    if hasattr(model, "expert_model_parallel_size"):
        model.expert_model_parallel_size = 1
    for name, value in TINY_RUN.items():
        setattr(cfg.train, name, value)
    cfg.scheduler.lr_warmup_iters = 1
    cfg.scheduler.lr_decay_iters = None
    if hasattr(cfg.scheduler, "lr_wsd_decay_iters"):
        cfg.scheduler.lr_wsd_decay_iters = None
    cfg.validation.eval_interval = None
    cfg.validation.eval_iters = 0
    return sizes
