"""Epoch caps hold on what training really reads: the whole multi-epoch train stream, token by token.

``smartpt plan`` counts the train split (98% of the documents by default) and keeps room for the dataset's sample
and batch rounding; the phased dataset built from that plan is iterated to the end and every token it serves is
attributed to its (source, document, position). Per source, tokens read must not pass ``max_epochs`` times the train
split's tokens (counted here independently from the ``.bin`` contents), no held-out document may appear, and no token
may be read more than ``ceil(max_epochs)`` times.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

from nemo_smartpt.blend.phased_build import phased_dataset_from_plan
from nemo_smartpt.blend.phased_dataset import PhasedDatasetConfig
from nemo_smartpt.blend.phased_spec import PhasedDatasetError
from nemo_smartpt.cli import main

SEQ, GBS, SPLIT = 16, 4, "98,1,1"
TOKENIZER = NullTokenizer(vocab_size=10**8)
SOURCES = {  # name: (quality, category, documents, max_epochs)
    "crawl_high": ("high", "crawl", 40, 4),
    "crawl_low": ("low", "crawl", 200, 1),
    "math": ("high", "math", 30, 3),
}


def write_source(prefix: str, source: int, n_docs: int) -> list[int]:
    """Tokens ``source*1e6 + doc*1e3 + position``; returns the document lengths."""
    rng = np.random.default_rng(source)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    lengths = []
    for doc in range(n_docs):
        n = int(rng.integers(20, 40))
        builder.add_document(torch.tensor(source * 1_000_000 + doc * 1000 + np.arange(n)), [n])
        lengths.append(n)
    builder.finalize(prefix + ".idx")
    return lengths


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    entries, train = [], {}
    for s, (name, (quality, category, docs, cap)) in enumerate(SOURCES.items(), start=1):
        lengths = write_source(str(root / name), s, docs)
        train_docs = round(0.98 * docs)  # megatron-core's split of 98,1,1 over the documents
        train[name] = (s, train_docs, sum(lengths[:train_docs]))
        entries.append({"name": name, "prefix": name, "quality": quality, "category": category, "max_epochs": cap})
    (root / "catalog.yaml").write_text(yaml.safe_dump({"sources": entries}))
    budget = int(0.88 * sum(SOURCES[n][3] * t for n, (_, _, t) in train.items()))
    args = [f"catalog={root / 'catalog.yaml'}", f"budget_tokens={budget}", f"out={root / 'plan'}", "quiet=true"]
    assert main(["plan", *args, f"seq_length={SEQ}", f"global_batch_size={GBS}", f"split={SPLIT}"]) == 0
    plan = json.loads((root / "plan" / "plan.json").read_text())
    return root, plan, train


def test_a_whole_multi_epoch_stream_reads_no_source_past_its_cap(planned):
    root, plan, train = planned
    assert plan["split"] == SPLIT and {s["name"]: s["tokens"] for s in plan["sources"]} == {
        n: t for n, (_, _, t) in train.items()
    }
    cfg = PhasedDatasetConfig(SEQ, GBS, seed=3, split=SPLIT, path_to_cache=str(root / "cache"))
    ds = phased_dataset_from_plan(plan, cfg, TOKENIZER)
    read = {name: 0 for name in SOURCES}
    per_token: dict[int, int] = {}
    names = list(SOURCES)
    for i in range(len(ds)):
        sample = ds[i]
        tokens = sample["tokens"].numpy().astype(np.int64)  # SEQ new tokens per sample (the label overlaps)
        read[names[sample["dataset_id"]]] += len(tokens)
        for t in tokens.tolist():
            per_token[t] = per_token.get(t, 0) + 1
    for name, (s, train_docs, train_tokens) in train.items():
        cap = SOURCES[name][3]
        epochs = read[name] / train_tokens
        assert read[name] <= cap * train_tokens, (name, epochs, cap)
        ids = np.array([t for t in per_token if t // 1_000_000 == s])
        assert (ids % 1_000_000 // 1000).max() < train_docs, f"{name}: a held-out document was read"
        assert max(per_token[t] for t in ids.tolist()) <= math.ceil(cap), name
    # the caps bind: the plan takes crawl_high and math close to their caps, crawl_low to all its tokens
    assert read["crawl_high"] / train["crawl_high"][2] > 0.85 * SOURCES["crawl_high"][3]
    assert read["math"] / train["math"][2] > 0.85 * SOURCES["math"][3]


def test_a_plan_without_room_for_rounding_is_refused_not_overread(planned):
    root, plan, train = planned
    # one phase that draws crawl_high 2% past its cap, as a planner that ignored the train split or rounding might
    greedy = json.loads(json.dumps(plan))
    budget, high_tokens = plan["budget_tokens"], train["crawl_high"][2]
    w = 1.02 * SOURCES["crawl_high"][3] * high_tokens / budget
    greedy["phases"] = [
        {
            "name": "only",
            "start_token": 0,
            "end_token": budget,
            "weights": {"crawl_high": w, "crawl_low": 1 - w, "math": 0},
        }
    ]
    cfg = PhasedDatasetConfig(SEQ, GBS, seed=3, split=SPLIT, path_to_cache=str(root / "cache2"))
    with pytest.raises(PhasedDatasetError, match=r"source 'crawl_high' would (be read|start epoch).*max_epochs 4"):
        phased_dataset_from_plan(greedy, cfg, TOKENIZER)


def test_a_plan_of_another_split_is_refused(planned):
    root, plan, _ = planned
    cfg = PhasedDatasetConfig(SEQ, GBS, seed=3, split="90,5,5", path_to_cache=str(root / "cache3"))
    with pytest.raises(PhasedDatasetError, match="re-plan with split=90,5,5"):
        phased_dataset_from_plan(plan, cfg, TOKENIZER)
