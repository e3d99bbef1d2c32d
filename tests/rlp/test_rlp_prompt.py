"""Thought prompt and token layouts: which positions train, which position scores x_t, truncation policies."""

import pytest
import torch

from nemo_smartpt.rlp import (
    RLPConfig,
    ThoughtLayout,
    build_baseline_sequence,
    build_scoring_group,
    render_thought_prompt,
    rollout_prompt_ids,
    split_thought,
    stack_groups,
)

# The v2 appendix text, copied from the paper (reference/rlp.md), to catch drift in the template.
PAPER_PROMPT = (
    "You are a continuation-and-reasoning assistant. You receive the prefix of a context, problem, solution, or "
    "derivation. First, briefly think between <think> and </think> about what should come next. Then, after "
    "</think>, continue the text in the SAME style as the prefix (notation, LaTeX, tone), focusing on the next few "
    "steps rather than jumping to a final boxed answer. Do not restate the question or add meta commentary; simply "
    "continue the content."
)
PROMPT, OPEN, CLOSE, PAD = (101, 102, 103), (201,), (202, 203), 0


def layout(**kw):
    return ThoughtLayout(prompt_ids=PROMPT, think_open_ids=OPEN, think_close_ids=CLOSE, pad_id=PAD, **kw)


def test_default_prompt_is_the_papers():
    assert render_thought_prompt(separator="") == PAPER_PROMPT
    assert render_thought_prompt(RLPConfig().thought_prompt, separator="") == PAPER_PROMPT
    custom = render_thought_prompt("Think in {think_open}..{think_close}: $\\frac{a}{b}$", "<t>", "</t>", "\n")
    assert custom == "Think in <t>..</t>: $\\frac{a}{b}$\n"  # LaTeX braces survive
    assert render_thought_prompt("") == ""


def test_split_thought():
    assert split_thought([5, 6, 202, 203, 9], CLOSE, 10) == ([5, 6, 202, 203], True)
    assert split_thought([5, 6, 7, 8], CLOSE, 3) == ([5, 6, 7], False)
    assert split_thought([5, 202, 203], CLOSE, 2) == ([5, 202], False)  # the limit cuts the close tag
    assert split_thought([202, 203], CLOSE, 2) == ([202, 203], True)  # empty thought, closed


@pytest.mark.parametrize("truncation", ["force_close", "exclude"])
def test_scoring_group_layout(truncation):
    ctx, target, limit = [11, 12, 13], 77, 4
    thoughts = [[5, 202, 203], [6, 7, 8, 9, 10], [202, 203, 99]]  # closed, truncated, empty+closed (tail dropped)
    grp = build_scoring_group(layout(truncation=truncation), ctx, thoughts, target, limit, pad_to=16)
    prefix = list(PROMPT) + ctx + list(OPEN)
    expected_full = [
        prefix + [5, 202, 203] + [target],
        prefix + [6, 7, 8, 9] + list(CLOSE) + [target],
        prefix + [202, 203] + [target],
    ]
    expected_policy = [[5, 202, 203], [6, 7, 8, 9], [202, 203]]
    assert grp.input_ids_GL.shape == (3, 16) and grp.prefix_len == len(prefix)
    assert grp.truncated_G.tolist() == [False, True, False]
    assert grp.valid_G.tolist() == ([True, False, True] if truncation == "exclude" else [True, True, True])
    assert grp.thought_len_G.tolist() == [3, 4, 2]
    for g in range(3):
        full = expected_full[g]
        n = len(full) - 1
        assert grp.input_ids_GL[g, :n].tolist() == full[:-1] and grp.labels_GL[g, :n].tolist() == full[1:]
        assert (grp.input_ids_GL[g, n:] == PAD).all() and grp.attention_mask_GL[g].sum() == n
        # exactly one scoring position, whose label is the target
        assert grp.predict_mask_GL[g].sum() == 1 and grp.labels_GL[g, grp.predict_index_G[g]] == target
        assert grp.predict_index_G[g] == n - 1
        # trained labels are exactly the policy-generated tokens, in order (never the forced close, never x_t)
        trained = grp.labels_GL[g][grp.thought_mask_GL[g]].tolist()
        if grp.valid_G[g]:
            assert trained == expected_policy[g]
        else:
            assert trained == []
        assert not (grp.thought_mask_GL[g] & grp.predict_mask_GL[g]).any()


def test_rollout_and_baseline_sequences():
    ctx = [11, 12, 13]
    assert rollout_prompt_ids(layout(), ctx) == [101, 102, 103, 11, 12, 13, 201]
    with_p = build_baseline_sequence(layout(baseline_sees_prompt=True), ctx, 77)
    assert with_p.input_ids == [101, 102, 103, 11, 12, 13] and with_p.labels[with_p.predict_index] == 77
    without = build_baseline_sequence(layout(baseline_sees_prompt=False), ctx, 77)
    assert without.input_ids == [11, 12, 13] and without.predict_index == 2 and without.labels[2] == 77
    with pytest.raises(ValueError):
        build_baseline_sequence(ThoughtLayout((), OPEN, CLOSE), [], 5)


def test_stack_groups_pads_to_common_length():
    lay = layout()
    g1 = build_scoring_group(lay, [11], [[5, 202, 203], [6, 202, 203]], 77, 8)
    g2 = build_scoring_group(lay, [11, 12, 13, 14], [[5, 6, 7, 202, 203], [202, 203]], 78, 8)
    batch = stack_groups([g1, g2], pad_id=PAD)
    L = g2.input_ids_GL.shape[1]
    assert batch["input_ids_BGL"].shape == (2, 2, L) and batch["valid_BG"].shape == (2, 2)
    assert torch.equal(batch["input_ids_BGL"][0, :, : g1.input_ids_GL.shape[1]], g1.input_ids_GL)
    assert batch["thought_mask_BGL"][0, :, g1.input_ids_GL.shape[1] :].sum() == 0
    assert batch["labels_BGL"].gather(-1, batch["predict_index_BG"][..., None])[..., 0].tolist() == [
        [77, 77],
        [78, 78],
    ]


def test_layout_rejects_bad_settings():
    with pytest.raises(ValueError):
        ThoughtLayout(PROMPT, OPEN, ())
    with pytest.raises(ValueError):
        ThoughtLayout(PROMPT, OPEN, CLOSE, truncation="drop")


def test_end_of_document_ends_a_thought():
    from nemo_smartpt.rlp import thought_ended

    EOD = 9
    assert split_thought([5, EOD, 6, 202, 203], CLOSE, 10, end_ids=(EOD,)) == ([5, EOD], False)
    assert split_thought([5, 202, 203, EOD], CLOSE, 10, end_ids=(EOD,)) == ([5, 202, 203], True)
    assert thought_ended([5, EOD], False, (EOD,)) and not thought_ended([5, 6], False, (EOD,))
    group = build_scoring_group(layout(end_ids=(EOD,)), [40, 41], [[5, EOD, 7], [5, 6, 7]], 77, max_thought_tokens=3)
    assert group.truncated_G.tolist() == [False, True]  # EOD ended thought 0; thought 1 hit the limit
    prefix = len(PROMPT) + 2 + len(OPEN)
    row0 = group.input_ids_GL[0].tolist()
    assert row0[prefix : prefix + 4] == [5, EOD, *CLOSE]  # EOD kept, </think> appended
    assert group.thought_len_G.tolist() == [2, 3] and int(group.thought_mask_GL[0].sum()) == 2
