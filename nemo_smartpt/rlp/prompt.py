"""The thought prompt and the token layouts of an RLP step (pure list/tensor ops on token ids).

Layouts (``P`` = rendered thought prompt, optional; ``x_<t`` = the context; ``x_t`` = the target token)::

    rollout prompt     P x_<t <think>                                  → the policy samples c_i (stops at </think>)
    scoring sequence   P x_<t <think> c_i </think> x_t                 → logp of c_i (policy gradient), S_pred at x_t
    baseline sequence  [P] x_<t x_t                                    → S_ema (no thought; P iff baseline_sees_prompt)

A scoring sequence is stored next-token style: ``input_ids = seq[:-1]``, ``labels = seq[1:]``, so the log-prob of
``labels[j]`` is read at position ``j``. ``thought_mask`` marks the positions whose label is a policy-generated thought
token (including a ``</think>`` the policy produced itself, since stopping is one of its decisions); a ``</think>``
appended by ``force_close`` gets no gradient. ``predict_index`` is the one position whose label is x_t.

Truncated thoughts (no ``</think>`` within ``max_thought_tokens``) are always closed so the sequence can be scored;
under ``truncation="exclude"`` they are additionally marked invalid (no loss, not part of the group baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from nemo_smartpt.rlp.config import RLPConfig

DEFAULT_THOUGHT_PROMPT = (
    "You are a continuation-and-reasoning assistant. You receive the prefix of a context, problem, solution, or "
    "derivation. First, briefly think between {think_open} and {think_close} about what should come next. Then, after "
    "{think_close}, continue the text in the SAME style as the prefix (notation, LaTeX, tone), focusing on the next "
    "few steps rather than jumping to a final boxed answer. Do not restate the question or add meta commentary; "
    "simply continue the content."
)
"""The paper's continuation-and-reasoning prompt (arXiv 2510.01265 v2 appendix), with the tags as placeholders."""

PROMPT_SEPARATOR = "\n\n"
"""Text between the prompt and the context, so the prompt reads as its own paragraph for a base model."""


def render_thought_prompt(
    template: str = DEFAULT_THOUGHT_PROMPT,
    think_open: str = "<think>",
    think_close: str = "</think>",
    separator: str = PROMPT_SEPARATOR,
) -> str:
    """Substitute ``{think_open}``/``{think_close}`` and append the separator; ``""`` for an empty template.

    Uses ``str.replace`` rather than ``str.format`` because user prompts may contain LaTeX braces.
    """
    if not template:
        return ""
    return template.replace("{think_open}", think_open).replace("{think_close}", think_close) + separator


@dataclasses.dataclass(frozen=True)
class ThoughtLayout:
    """Token ids of the fixed pieces of every layout."""

    prompt_ids: tuple[int, ...]
    """The tokenised rendered thought prompt; empty for no prompt."""
    think_open_ids: tuple[int, ...]
    """Tokens that open a thought (may carry a leading space token)."""
    think_close_ids: tuple[int, ...]
    """Tokens that end a thought."""
    pad_id: int = 0
    """Padding id of the scoring batch (masked everywhere)."""
    baseline_sees_prompt: bool = False
    """Whether the baseline sequence starts with ``prompt_ids`` (see ``RLPConfig.baseline_sees_prompt``)."""
    truncation: str = "force_close"
    """``force_close`` or ``exclude`` (see ``RLPConfig.truncation``)."""
    end_ids: tuple[int, ...] = ()
    """Single tokens that also end a thought (the end of document): kept as the thought's last policy token, then
    ``</think>`` is appended without gradient; such a thought is not truncated."""

    def __post_init__(self):
        if not self.think_close_ids:
            raise ValueError("think_close_ids must be non-empty")
        if self.truncation not in ("force_close", "exclude"):
            raise ValueError(f"truncation must be 'force_close' or 'exclude', got {self.truncation!r}")


def rollout_prompt_ids(layout: ThoughtLayout, context_ids: Sequence[int]) -> list[int]:
    """``P x_<t <think>``: what the policy is prefilled with (once per group; the G samples share its KV cache)."""
    return [*layout.prompt_ids, *context_ids, *layout.think_open_ids]


def split_thought(
    thought_ids: Sequence[int], close_ids: Sequence[int], max_thought_tokens: int, end_ids: Sequence[int] = ()
) -> tuple[list, bool]:
    """Cut a sampled thought at its first ``</think>`` (kept), its first end token (kept; EOD), or the length limit.

    Returns:
        ``(policy_ids, closed)``: the tokens the policy generated and is trained on, and whether it closed the
        thought itself with ``</think>`` within ``max_thought_tokens`` tokens (``</think>`` included in the count).
        A thought ended by an end token is not closed (``</think>`` is appended) but not truncated either:
        see :func:`thought_ended`.
    """
    thought = list(thought_ids)[:max_thought_tokens]
    k = len(close_ids)
    ends = set(int(t) for t in end_ids)
    for i in range(len(thought)):
        if thought[i] in ends:
            return thought[: i + 1], False
        if thought[i : i + k] == list(close_ids):
            return thought[: i + k], True
    return thought, False


def thought_ended(policy_ids: Sequence[int], closed: bool, end_ids: Sequence[int] = ()) -> bool:
    """Whether the policy ended the thought itself (``</think>`` or an end token) rather than the length limit."""
    return closed or (bool(policy_ids) and int(policy_ids[-1]) in set(int(t) for t in end_ids))


@dataclasses.dataclass
class ScoringGroup:
    """The G scoring sequences of one target position, padded to a common length ``L``."""

    input_ids_GL: torch.Tensor
    labels_GL: torch.Tensor
    thought_mask_GL: torch.Tensor
    """bool: the label is a policy-generated thought token (gets policy gradient)."""
    predict_mask_GL: torch.Tensor
    """bool: exactly one True per row, where the label is x_t (S_pred)."""
    predict_index_G: torch.Tensor
    attention_mask_GL: torch.Tensor
    """bool: not padding."""
    truncated_G: torch.Tensor
    valid_G: torch.Tensor
    """bool: False for truncated thoughts under ``exclude`` (masked out of loss and advantages)."""
    thought_len_G: torch.Tensor
    """policy-generated tokens per thought (the trained ones)."""
    prefix_len: int
    """length of ``P x_<t <think>``, shared by all G rows (for a shared-prefix forward)."""


def build_scoring_group(
    layout: ThoughtLayout,
    context_ids: Sequence[int],
    thoughts: Sequence[Sequence[int]],
    target_id: int,
    max_thought_tokens: int,
    pad_to: int | None = None,
) -> ScoringGroup:
    """Assemble ``P x_<t <think> c_i </think> x_t`` for every sampled thought of one position.

    Args:
        layout: fixed token pieces and the truncation policy.
        context_ids: x_<t (already truncated to ``max_context``).
        thoughts: G generated token lists, as sampled (may end with ``</think>``; tokens after it are dropped).
        target_id: x_t.
        max_thought_tokens: the generation limit L.
        pad_to: pad to at least this length (e.g. a batch-wide maximum).
    """
    prefix = rollout_prompt_ids(layout, context_ids)
    rows, thought_spans, truncated, thought_lens = [], [], [], []
    for thought in thoughts:
        policy_ids, closed = split_thought(thought, layout.think_close_ids, max_thought_tokens, layout.end_ids)
        forced = [] if closed else list(layout.think_close_ids)
        rows.append(prefix + policy_ids + forced + [target_id])
        # The label at input position j is seq[j + 1]; thought token k of the sequence is predicted at k − 1.
        thought_spans.append((len(prefix) - 1, len(prefix) - 1 + len(policy_ids)))
        truncated.append(not thought_ended(policy_ids, closed, layout.end_ids))
        thought_lens.append(len(policy_ids))

    G = len(rows)
    L = max(max(len(r) for r in rows) - 1, pad_to or 0)
    input_ids_GL = torch.full((G, L), layout.pad_id, dtype=torch.long)
    labels_GL = torch.full((G, L), layout.pad_id, dtype=torch.long)
    thought_mask_GL = torch.zeros((G, L), dtype=torch.bool)
    predict_mask_GL = torch.zeros((G, L), dtype=torch.bool)
    attention_mask_GL = torch.zeros((G, L), dtype=torch.bool)
    truncated_G = torch.tensor(truncated, dtype=torch.bool)
    valid_G = ~truncated_G if layout.truncation == "exclude" else torch.ones(G, dtype=torch.bool)
    for g, row in enumerate(rows):
        n = len(row) - 1
        input_ids_GL[g, :n] = torch.tensor(row[:-1])
        labels_GL[g, :n] = torch.tensor(row[1:])
        attention_mask_GL[g, :n] = True
        predict_mask_GL[g, n - 1] = True
        if valid_G[g]:
            lo, hi = thought_spans[g]
            thought_mask_GL[g, lo:hi] = True
    return ScoringGroup(
        input_ids_GL=input_ids_GL,
        labels_GL=labels_GL,
        thought_mask_GL=thought_mask_GL,
        predict_mask_GL=predict_mask_GL,
        predict_index_G=predict_mask_GL.to(torch.long).argmax(dim=1),
        attention_mask_GL=attention_mask_GL,
        truncated_G=truncated_G,
        valid_G=valid_G,
        thought_len_G=torch.tensor(thought_lens, dtype=torch.long),
        prefix_len=len(prefix),
    )


def stack_groups(groups: Sequence[ScoringGroup], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack B groups into ``[B, G, L]`` tensors (padding every group to the longest); keys drop the ``_GL`` suffix
    for ``_BGL`` and ``_G`` for ``_BG``."""
    L = max(g.input_ids_GL.shape[1] for g in groups)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return F.pad(t, (0, L - t.shape[1]), value=value)

    return {
        "input_ids_BGL": torch.stack([pad(g.input_ids_GL, pad_id) for g in groups]),
        "labels_BGL": torch.stack([pad(g.labels_GL, pad_id) for g in groups]),
        "thought_mask_BGL": torch.stack([pad(g.thought_mask_GL, False) for g in groups]),
        "predict_mask_BGL": torch.stack([pad(g.predict_mask_GL, False) for g in groups]),
        "attention_mask_BGL": torch.stack([pad(g.attention_mask_GL, False) for g in groups]),
        "predict_index_BG": torch.stack([g.predict_index_G for g in groups]),
        "truncated_BG": torch.stack([g.truncated_G for g in groups]),
        "valid_BG": torch.stack([g.valid_G for g in groups]),
        "thought_len_BG": torch.stack([g.thought_len_G for g in groups]),
    }


def flat_scoring_batch(
    stacked: dict[str, torch.Tensor],
    rollout_logp_BGL: torch.Tensor | None = None,
    s_ema_B: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The step's micro-batch from :func:`stack_groups`: the B·G rows flattened to ``N = B·G`` (``_NL``/``_N``),
    the sampler's log-probs (zeros when not given: ratio 1), and S_ema per group (``has_s_ema`` says whether it was
    computed). No next-token rows yet (``ntp_loss_mask_NL`` all zero) and no position ids (the length may still be
    padded)."""
    B, G, L = stacked["input_ids_BGL"].shape
    N = B * G
    return {
        "input_ids_NL": stacked["input_ids_BGL"].reshape(N, L),
        "labels_NL": stacked["labels_BGL"].reshape(N, L),
        "thought_mask_NL": stacked["thought_mask_BGL"].reshape(N, L),
        "rollout_logp_NL": torch.zeros(N, L) if rollout_logp_BGL is None else rollout_logp_BGL.reshape(N, L),
        "predict_index_N": stacked["predict_index_BG"].reshape(N),
        "valid_N": stacked["valid_BG"].reshape(N),
        "truncated_N": stacked["truncated_BG"].reshape(N),
        "thought_len_N": stacked["thought_len_BG"].reshape(N),
        "s_ema_B": torch.zeros(B) if s_ema_B is None else s_ema_B.float().cpu(),
        "has_s_ema": torch.tensor(s_ema_B is not None),
        "num_groups": torch.tensor(B),
        "ntp_loss_mask_NL": torch.zeros(N, L),
    }


@dataclasses.dataclass
class BaselineSequence:
    """``[P] x_<t x_t`` in next-token form; S_ema = log p_φ(labels[predict_index]) at ``predict_index``."""

    input_ids: list[int]
    labels: list[int]
    predict_index: int


def build_baseline_sequence(layout: ThoughtLayout, context_ids: Sequence[int], target_id: int) -> BaselineSequence:
    """The no-thought sequence of one position (one baseline forward per position, not per rollout)."""
    prefix = (list(layout.prompt_ids) if layout.baseline_sees_prompt else []) + list(context_ids)
    if not prefix:
        raise ValueError("baseline sequence needs a non-empty context (or a prompt)")
    seq = prefix + [target_id]
    return BaselineSequence(input_ids=seq[:-1], labels=seq[1:], predict_index=len(seq) - 2)


def layout_from_tokenizer(cfg: RLPConfig, tokenize, pad_id: int = 0) -> ThoughtLayout:
    """A :class:`ThoughtLayout` from a text tokenizer function ``str -> list[int]`` and the config's strings."""
    prompt = render_thought_prompt(cfg.thought_prompt, cfg.think_open, cfg.think_close)
    return ThoughtLayout(
        prompt_ids=tuple(tokenize(prompt)) if prompt else (),
        think_open_ids=tuple(tokenize(cfg.think_open)),
        think_close_ids=tuple(tokenize(cfg.think_close)),
        pad_id=pad_id,
        baseline_sees_prompt=cfg.baseline_sees_prompt,
        truncation=cfg.truncation,
    )
