"""RLP: reinforcement learning as a pretraining objective (arXiv 2510.01265), the pure parts (no Megatron import).

Mental model. One network θ is both a thought policy and a next-token scorer; a lagged EMA copy φ scores without a
thought. For each document of a packed pretraining batch, pick a target token x_t (``positions``), prompt the policy
with ``P x_<t <think>`` and sample G thoughts (``prompt`` builds the layouts; the lead's ``rollout`` samples). Then::

    S_pred(c_i) = log p_θ(x_t | x_<t, c_i)          scoring forward, same pass as the policy log-probs
    S_ema       = log p_φ(x_t | x_<t)               one no-grad forward per position with φ swapped in (``ema``)
    r_i         = S_pred(c_i) − S_ema               eq. 5, ``info_gain_rewards``
    A_i         = G/(G−1)·(r_i − mean_j r_j)        eq. 7, ``group_advantages(..., "loo")``
    loss        = clipped surrogate on thought tokens only, token-mean per thought, mean over thoughts
                                                     eq. 8, ``rlp_policy_loss`` → (loss_sum, count, metrics)
    φ ← τ·φ + (1−τ)·θ after every optimizer step    ``ParamEMA.update``

Gradients reach only thought tokens; the target token and the baseline are stop-gradient. Because every thought of a
group shares S_ema, it cancels from the ``loo``/``grpo`` advantages: the EMA forward changes the logged reward, not
the gradient (``RLPConfig.baseline_affects_gradient``); only cross-group estimators such as ``batch`` feel it.

Modules: ``config`` (defaults), ``objective`` (eq. 5/7/8 and metrics), ``positions`` (targets in packed samples),
``prompt`` (thought prompt, token layouts), ``ema`` (weight EMA), ``flops`` (FLOP accounting, NTP-equivalent tokens).

The Megatron-facing machinery (log-probs, samplers, preparation, step, pipeline, callbacks) lives in the
``nemo_smartpt.rlp.megatron`` subpackage, apart from the paper's maths here.
"""

from nemo_smartpt.rlp.config import RLPConfig, RLPConfigError
from nemo_smartpt.rlp.ema import EMAStateError, ParamEMA
from nemo_smartpt.rlp.flops import (
    ComputeMatch,
    ModelFlopsSpec,
    RLPStepFlops,
    flop_matched_ntp_tokens,
    ntp_flops_per_token,
    ours_ntp_equivalent_tokens,
    paper_ntp_equivalent_tokens,
    rlp_step_flops,
    rlp_step_flops_from_config,
)
from nemo_smartpt.rlp.objective import (
    AGGREGATIONS,
    RLPShapeError,
    UnknownEstimatorError,
    available_estimators,
    get_estimator,
    group_advantages,
    info_gain_rewards,
    reduce_metrics,
    register_estimator,
    rlp_policy_loss,
    rlp_reward_metrics,
)
from nemo_smartpt.rlp.positions import (
    PositionSample,
    TargetPosition,
    document_spans,
    gather_context,
    sample_target_positions,
)
from nemo_smartpt.rlp.prompt import (
    DEFAULT_THOUGHT_PROMPT,
    BaselineSequence,
    ScoringGroup,
    ThoughtLayout,
    build_baseline_sequence,
    build_scoring_group,
    render_thought_prompt,
    rollout_prompt_ids,
    split_thought,
    stack_groups,
    thought_ended,
)

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_THOUGHT_PROMPT",
    "BaselineSequence",
    "ComputeMatch",
    "EMAStateError",
    "ModelFlopsSpec",
    "ParamEMA",
    "PositionSample",
    "RLPConfig",
    "RLPConfigError",
    "RLPShapeError",
    "RLPStepFlops",
    "ScoringGroup",
    "TargetPosition",
    "ThoughtLayout",
    "UnknownEstimatorError",
    "available_estimators",
    "build_baseline_sequence",
    "build_scoring_group",
    "document_spans",
    "flop_matched_ntp_tokens",
    "gather_context",
    "get_estimator",
    "group_advantages",
    "info_gain_rewards",
    "ntp_flops_per_token",
    "ours_ntp_equivalent_tokens",
    "paper_ntp_equivalent_tokens",
    "reduce_metrics",
    "register_estimator",
    "render_thought_prompt",
    "rlp_policy_loss",
    "rlp_reward_metrics",
    "rlp_step_flops",
    "rlp_step_flops_from_config",
    "rollout_prompt_ids",
    "sample_target_positions",
    "split_thought",
    "stack_groups",
    "thought_ended",
]
