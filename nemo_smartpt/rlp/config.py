"""``RLPConfig``: the one home of every RLP default (arXiv 2510.01265; values from the paper where it states them).

The dataclass does no I/O and no checking at construction; call :meth:`RLPConfig.validate` at setup (the training
entry point does) so that a bad override fails loudly with an :class:`RLPConfigError` naming the field, before any
model is built.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

from nemo_smartpt.rlp.objective import AGGREGATIONS, available_estimators
from nemo_smartpt.rlp.prompt import DEFAULT_THOUGHT_PROMPT

BASELINES = ("ema", "current", "none")
GENERATION_ENGINES = ("auto", "kv_cache", "dynamic")
TRUNCATION_POLICIES = ("force_close", "exclude")
LR_SCHEDULES = ("constant", "linear", "cosine", "inverse-square-root")
# Estimators under which a per-group constant added to every reward leaves the advantages unchanged, so S_ema
# (identical for all G thoughts of a position) cancels from the gradient and only changes the logged reward.
BASELINE_CANCELLING_ESTIMATORS = ("loo", "grpo")


class RLPConfigError(ValueError):
    """A field of :class:`RLPConfig` holds an invalid value.

    Attributes:
        field: the offending field name (as written in a Hydra override, ``rlp.<field>=...``).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"rlp.{field}: {message}")


@dataclasses.dataclass
class RLPConfig:
    """Configuration of an RLP step. Every default lives here; call sites never re-default."""

    num_rollouts: int = 16
    """G, thoughts sampled per target position (paper: 16; ablation 4/8/16/32 → 41.38/41.95/42.17/41.75)."""

    max_thought_tokens: int = 2048
    """L, generation limit per thought including ``</think>`` (paper: 2048; 512 collapses to 24.65 overall)."""

    temperature: float = 0.7
    """Sampling temperature of the thought policy (paper: 0.7)."""

    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it (the paper does not mention nucleus sampling)."""

    generation_engine: str = "auto"
    """Who generates the thoughts: ``kv_cache`` (our sampler over megatron-core's static KV cache: one prefill per
    group, any TP/PP, CPU or GPU), ``dynamic`` (megatron-core's ``DynamicInferenceEngine``: paged KV, prefix caching,
    every group of a micro-batch in flight at once; needs flash-attn and one pipeline stage) or ``auto`` (``dynamic``
    when CUDA and flash-attn are present and PP = 1, else ``kv_cache``)."""

    dynamic_block_size_tokens: int = 256
    """KV block size of the dynamic engine; prefix caching shares only complete blocks of a prompt (flash-attn 2's
    paged kernels need a multiple of 256)."""

    dynamic_buffer_size_gb: float = 20.0
    """KV buffer the dynamic engine reserves on the GPU (megatron-core's default); requests queue when it is full."""

    dynamic_max_requests: int | None = None
    """Cap on concurrently active rollout requests in the dynamic engine (None: sized from the buffer)."""

    dynamic_release_kv: bool = True
    """Suspend the dynamic engine after each generation, freeing its KV buffer for the training step (it is
    reallocated at the next generation)."""

    dynamic_mamba_prefix_cache_gb: float = 1.0
    """Hybrid (Mamba) models only: memory for Mamba states cached at shared prefix block boundaries; without it
    megatron-core disables prefix caching for hybrid models."""

    ema_decay: float = 0.999
    """τ in φ ← τ·φ + (1−τ)·θ, applied after every optimizer step (paper: 0.999, best of 0.99..0.9995)."""

    baseline: str = "ema"
    """Who scores the no-thought baseline S_ema: ``ema`` (the paper), ``current`` (θ itself) or ``none`` (S_ema = 0)."""

    baseline_every: int = 1
    """Compute the baseline forward only every k steps. Under ``loo``/``grpo`` S_ema cancels from the gradient, so
    k > 1 only thins the logged reward; under ``batch`` it would change the gradient and is rejected."""

    estimator: str = "loo"
    """Advantage estimator: ``loo`` (eq. 7, the paper), ``grpo`` (std-normalised per group) or ``batch``."""

    aggregation: str = "seq_mean_token_mean"
    """Loss aggregation: ``seq_mean_token_mean`` (eq. 8: token mean per thought, mean over thoughts) or
    ``token_mean`` (mean over all thought tokens of the batch)."""

    eps_low: float = 0.2
    """Lower clip ε_low: the ratio is clipped at 1 − ε_low (not stated in the paper; inert at one update per batch)."""

    eps_high: float = 0.2
    """Upper clip ε_high: the ratio is clipped at 1 + ε_high (not stated in the paper)."""

    kl_beta: float = 0.0
    """β of a per-token KL(π_θ ‖ π_ref) penalty (paper: 0; 1e-4 and 1e-3 scored lower). Must be 0 here: the Megatron
    step runs no reference-policy forward (``objective.rlp_policy_loss`` accepts β with reference log-probs)."""

    positions_per_document: int = 1
    """Target positions drawn uniformly at random per document (paper v2: one)."""

    min_context: int = 32
    """Fewest context tokens (inside the same document) before a target; shorter documents are skipped and counted.
    Not stated in the paper; 32 keeps the thought conditioned on something."""

    max_context: int = 2048
    """Context is truncated to the most recent ``max_context`` tokens of the document (paper: context length 2048)."""

    truncation: str = "force_close"
    """Thoughts that hit ``max_thought_tokens`` without ``</think>``: ``force_close`` appends ``</think>`` (no
    gradient on it) and scores; ``exclude`` drops them from the loss and from their group's baseline."""

    logits_chunk_tokens: int = 1024
    """Positions per chunk of output-layer logits in the training forward and the baseline: hidden states are
    gathered at the scored positions (thought tokens, targets) before the output layer and the vocab-parallel
    log-softmax runs over at most this many positions at a time (``[chunk, V/tp]`` fp32 ≈ 0.6 GB at 151,936 / TP=1)."""

    max_positions_per_microbatch: int | None = None
    """Cap on target positions (groups of G rows) trained per micro-batch; positions beyond it are carried to the
    next micro-batches of the same step, and those left at the step's last micro-batch are dropped and counted
    (``rlp carried positions``, ``rlp dropped positions``). None: every position drawn from the micro-batch."""

    ntp_loss_weight: float = 0.0
    """λ of an optional next-token loss on the same documents (0 as in the paper; > 0 for continued pretraining)."""

    thought_prompt: str = DEFAULT_THOUGHT_PROMPT
    """Text placed before the context in the rollout prompt. ``{think_open}``/``{think_close}`` are substituted."""

    think_open: str = "<think>"
    """Text that opens a thought."""

    think_close: str = "</think>"
    """Text that ends a thought; generation stops on it."""

    baseline_sees_prompt: bool = False
    """Whether the no-thought baseline also sees ``thought_prompt`` before the context. The talk: "the same input
    context without the prompt is passed to the No-Think baseline" (False). True keeps the baseline's conditioning
    identical to the scorer's except for the thought; under ``loo`` the gradient is the same either way, only the
    logged reward and positive-gain fraction differ."""

    lr: float = 1e-6
    """Learning rate of the RLP steps (paper: 1e-6 constant), in force from the first RLP step on; the next-token
    steps before it keep the run's own ``optimizer.lr`` and scheduler."""

    lr_schedule: str = "constant"
    """Schedule of ``lr`` over the RLP steps: ``constant`` (the paper), ``linear``, ``cosine`` or
    ``inverse-square-root`` (megatron-core's ``OptimizerParamScheduler``, counted in RLP steps, decaying to
    ``min_lr`` at the last RLP step)."""

    min_lr: float = 0.0
    """Floor of a decaying RLP schedule (unused by ``constant``)."""

    lr_warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over the first RLP steps (not stated in the paper)."""

    weight_decay: float = 0.0
    """Decoupled weight decay during RLP steps (not stated in the paper; 0 as in TRL's GRPO trainer; with lr 1e-6 any
    decay is negligible). Norm and bias parameters stay undecayed (Megatron's ``wd_mult``)."""

    clip_grad: float = 1.0
    """Global gradient-norm clip during RLP steps (0 disables; 1.0 as in TRL and NeMo-RL)."""

    reset_optimizer_state: bool = True
    """Zero the Adam moments and step counts at the first RLP step: the paper's RLP starts from a checkpoint with a
    fresh optimizer, and next-token moments describe a different gradient (every token vs thought tokens only)."""

    ema_from_theta_if_missing: bool = False
    """A run that resumes inside its RLP phase from a checkpoint without the EMA state fails (one line) unless this is
    True, which restarts φ = θ at the resumed step (the paper's initialisation, not a continuation)."""

    shared_prefix_forward: bool = True
    """Training forward in the grouped layout: each group's context ``P x_<t <think>`` is encoded once and its G
    thoughts attend to it (Prefix Grouper's split, arXiv 2506.05433), instead of G rows that each re-encode it. Loss,
    rewards and gradients equal the per-row layout (tests); at context : thought = 1 : 1 and G = 16 it needs ~1.9x
    fewer tokens. Refused in one line at train start where it cannot run (context parallelism, Mamba/hybrid or MLA
    layers, sliding windows, TE attention without flash-attn); false restores the per-row forward."""

    seed: int = 1234
    """Seed of position sampling and rollouts (combined with step and rank by the step)."""

    def validate(self) -> RLPConfig:
        """Check every field; raise :class:`RLPConfigError` naming the first bad one. Returns ``self``."""
        _require(self.num_rollouts >= 2, "num_rollouts", f"needs >= 2 thoughts per group, got {self.num_rollouts}")
        _require(self.max_thought_tokens >= 1, "max_thought_tokens", f"must be >= 1, got {self.max_thought_tokens}")
        _require(
            math.isfinite(self.temperature) and self.temperature > 0,
            "temperature",
            f"must be > 0, got {self.temperature}",
        )
        _require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _require(
            self.generation_engine in GENERATION_ENGINES,
            "generation_engine",
            f"{self.generation_engine!r} is not one of {GENERATION_ENGINES}",
        )
        _require(
            self.dynamic_block_size_tokens >= 1,
            "dynamic_block_size_tokens",
            f"must be >= 1, got {self.dynamic_block_size_tokens}",
        )
        _require(
            self.dynamic_buffer_size_gb > 0,
            "dynamic_buffer_size_gb",
            f"must be > 0, got {self.dynamic_buffer_size_gb}",
        )
        _require(
            self.dynamic_mamba_prefix_cache_gb >= 0,
            "dynamic_mamba_prefix_cache_gb",
            f"must be >= 0, got {self.dynamic_mamba_prefix_cache_gb}",
        )
        _require(
            self.dynamic_max_requests is None or self.dynamic_max_requests >= 1,
            "dynamic_max_requests",
            f"must be >= 1 or null, got {self.dynamic_max_requests}",
        )
        _require(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _require(self.baseline in BASELINES, "baseline", f"{self.baseline!r} is not one of {BASELINES}")
        _require(self.baseline_every >= 1, "baseline_every", f"must be >= 1, got {self.baseline_every}")
        estimators = available_estimators()
        _require(self.estimator in estimators, "estimator", f"{self.estimator!r} is not one of {estimators}")
        _require(self.aggregation in AGGREGATIONS, "aggregation", f"{self.aggregation!r} is not one of {AGGREGATIONS}")
        _require(0.0 <= self.eps_low < 1.0, "eps_low", f"must be in [0, 1), got {self.eps_low}")
        _require(self.eps_high >= 0.0, "eps_high", f"must be >= 0, got {self.eps_high}")
        # The Megatron step computes no reference-policy log-probs (the paper: β = 0; 1e-4 and 1e-3 scored lower).
        # rlp_policy_loss takes kl_beta with caller-supplied reference log-probs for custom loops.
        _require(
            self.kl_beta == 0.0,
            "kl_beta",
            f"must be 0 for the Megatron RLP step (no reference-policy forward), got {self.kl_beta}",
        )
        _require(
            self.positions_per_document >= 1,
            "positions_per_document",
            f"must be >= 1, got {self.positions_per_document}",
        )
        _require(self.min_context >= 1, "min_context", f"must be >= 1, got {self.min_context}")
        _require(
            self.max_context >= self.min_context,
            "max_context",
            f"must be >= min_context ({self.min_context}), got {self.max_context}",
        )
        _require(
            self.truncation in TRUNCATION_POLICIES,
            "truncation",
            f"{self.truncation!r} is not one of {TRUNCATION_POLICIES}",
        )
        _require(self.logits_chunk_tokens >= 1, "logits_chunk_tokens", f"must be >= 1, got {self.logits_chunk_tokens}")
        _require(
            self.max_positions_per_microbatch is None or self.max_positions_per_microbatch >= 1,
            "max_positions_per_microbatch",
            f"must be >= 1 or null, got {self.max_positions_per_microbatch}",
        )
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"{self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        _require(0.0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        _require(self.lr_warmup_steps >= 0, "lr_warmup_steps", f"must be >= 0, got {self.lr_warmup_steps}")
        _require(self.weight_decay >= 0.0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.clip_grad >= 0.0, "clip_grad", f"must be >= 0 (0 disables), got {self.clip_grad}")
        _require(self.ntp_loss_weight >= 0.0, "ntp_loss_weight", f"must be >= 0, got {self.ntp_loss_weight}")
        _require(bool(self.think_open), "think_open", "must be a non-empty string")
        _require(bool(self.think_close), "think_close", "must be a non-empty string")
        _require(self.think_open != self.think_close, "think_close", "must differ from think_open")
        _require(isinstance(self.thought_prompt, str), "thought_prompt", "must be a string")
        if self.baseline_every > 1 and self.estimator not in BASELINE_CANCELLING_ESTIMATORS:
            # Under a cross-group estimator a stale or missing S_ema changes the gradient, not just the log.
            raise RLPConfigError(
                "baseline_every",
                f"= {self.baseline_every} skips the baseline on some steps, which changes the gradient under "
                f"estimator={self.estimator!r}; use one of {BASELINE_CANCELLING_ESTIMATORS} or baseline_every=1",
            )
        if self.baseline == "none" and self.baseline_every != 1:
            warnings.warn("rlp.baseline_every has no effect with rlp.baseline=none", stacklevel=2)
        return self

    def baseline_affects_gradient(self) -> bool:
        """Whether S_ema reaches the gradient (False under ``loo``/``grpo``: it cancels within each group)."""
        return self.baseline != "none" and self.estimator not in BASELINE_CANCELLING_ESTIMATORS

    def computes_baseline_at(self, step: int) -> bool:
        """Whether the baseline forward runs at optimizer step ``step`` (0-based)."""
        return self.baseline != "none" and step % self.baseline_every == 0


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise RLPConfigError(field, message)
