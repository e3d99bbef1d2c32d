"""Target positions in packed samples: never across a document boundary, at least min_context, deterministic."""

import collections

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_smartpt.rlp import document_spans, gather_context, sample_target_positions

EOD = 0


def pack(doc_lengths, seed=0, trailing_eod=True):
    """Documents of random non-EOD tokens (1..99) joined by EOD."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(doc_lengths):
        out += torch.randint(1, 100, (n,), generator=gen).tolist()
        if trailing_eod or i < len(doc_lengths) - 1:
            out.append(EOD)
    return out


def ref_spans(ids):
    spans, cur = [], None
    for i, tok in enumerate(ids):
        if tok == EOD:
            if cur is not None:
                spans.append((cur, i))
            cur = None
        elif cur is None:
            cur = i
    if cur is not None:
        spans.append((cur, len(ids)))
    return spans


@settings(max_examples=60, deadline=None)
@given(
    doc_lengths=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    rows=st.integers(1, 2),
    num_positions=st.integers(1, 3),
    min_context=st.integers(1, 12),
    extra_context=st.integers(0, 20),
    trailing_eod=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_positions_stay_inside_their_document(
    doc_lengths, rows, num_positions, min_context, extra_context, trailing_eod, seed
):
    max_context = min_context + extra_context
    row_ids = [pack(doc_lengths, seed=r, trailing_eod=trailing_eod) for r in range(rows)]
    S = max(len(r) for r in row_ids)
    row_ids = [r + [EOD] * (S - len(r)) for r in row_ids]
    if S == 0:
        return
    tokens = torch.tensor(row_ids)
    res = sample_target_positions(tokens, EOD, num_positions, min_context, max_context, generator=seed)

    expected_docs = skipped = 0
    expected_per_doc = {}
    for r, ids in enumerate(row_ids):
        for d, (a, b) in enumerate(ref_spans(ids)):
            expected_docs += 1
            admissible = (b - a) - min_context
            if admissible <= 0:
                skipped += 1
            else:
                expected_per_doc[(r, d)] = min(num_positions, admissible)
    assert res.num_documents == expected_docs and res.num_skipped == skipped

    got = collections.Counter((p.row, p.doc_id) for p in res.positions)
    assert dict(got) == expected_per_doc
    for p in res.positions:
        ids = row_ids[p.row]
        assert ids[p.target_index] != EOD
        window = ids[p.context_start : p.target_index + 1]
        assert EOD not in window  # context and target are in one document
        # at least min_context tokens of the same document precede the target
        assert p.target_index - min_context >= 0
        assert all(tok != EOD for tok in ids[p.target_index - min_context : p.target_index])
        assert p.context_len == min(max_context, p.target_index - p.doc_start)
        if p.context_len < max_context:  # not truncated → the context starts at the document start
            assert p.context_start == 0 or ids[p.context_start - 1] == EOD
    # distinct targets
    assert len({(p.row, p.target_index) for p in res.positions}) == len(res.positions)


def test_document_spans_match_reference():
    ids = [5, 6, EOD, EOD, 7, EOD, 8, 9, 10]
    assert document_spans(ids, EOD) == ref_spans(ids) == [(0, 2), (4, 5), (6, 9)]
    assert document_spans([EOD, EOD], EOD) == []


def test_deterministic_per_seed():
    tokens = torch.tensor(pack([50, 80, 3, 120]))
    a = sample_target_positions(tokens, EOD, 2, 4, 16, generator=123)
    b = sample_target_positions(tokens, EOD, 2, 4, 16, generator=torch.Generator().manual_seed(123))
    c = sample_target_positions(tokens, EOD, 2, 4, 16, generator=124)
    assert a.positions == b.positions
    assert a.positions != c.positions
    assert a.num_skipped == 1  # the 3-token document


def test_targets_are_uniform_over_admissible_positions():
    # 3000 rows of one 20-token document each, min_context=5 → 15 admissible targets, expect 200 each.
    tokens = torch.randint(1, 50, (3000, 20), generator=torch.Generator().manual_seed(0))
    res = sample_target_positions(tokens, EOD, 1, 5, 8, generator=9)
    counts = collections.Counter(p.target_index for p in res.positions)
    assert sorted(counts) == list(range(5, 20))
    chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi2 < 36.1  # 14 dof, p ≈ 0.001


def test_gather_context_keeps_most_recent_tokens():
    ids = [EOD, 1, 2, 3, 4, 5, 6, 7, EOD, 9]
    res = sample_target_positions(ids, EOD, num_positions=10, min_context=2, max_context=3, generator=0)
    by_target = {p.target_index: p for p in res.positions}
    assert sorted(by_target) == [3, 4, 5, 6, 7]  # doc [1, 8): targets need 2 tokens before them
    ctx, tgt = gather_context(ids, by_target[6])
    assert (ctx, tgt) == ([3, 4, 5], 6)
    ctx, tgt = gather_context(ids, by_target[3])
    assert (ctx, tgt) == ([1, 2], 3)
    assert res.num_skipped == 1  # the trailing one-token document [9]


@pytest.mark.parametrize("kwargs", [{"num_positions": 0}, {"min_context": 0}, {"min_context": 5, "max_context": 4}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        sample_target_positions([1, 2, 3], EOD, **kwargs)
