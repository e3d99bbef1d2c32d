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
from nemo_smartpt.blend.plan_io import load_plan
from nemo_smartpt.blend.planner import plan_matrix
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


def read_whole_stream(plan: dict, train: dict, cache: str) -> dict[str, float]:
    """Iterate the plan's whole train stream; check every source against its cap; return epochs read per source."""
    assert plan["split"] == SPLIT and {s["name"]: s["tokens"] for s in plan["sources"]} == {
        n: t for n, (_, _, t) in train.items()
    }
    caps = {s["name"]: s["max_epochs"] for s in plan["sources"]}
    cfg = PhasedDatasetConfig(SEQ, GBS, seed=3, split=SPLIT, path_to_cache=cache)
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
        cap = caps[name]
        epochs = read[name] / train_tokens
        assert read[name] <= cap * train_tokens, (name, epochs, cap)
        ids = np.array([t for t in per_token if t // 1_000_000 == s])
        assert (ids % 1_000_000 // 1000).max() < train_docs, f"{name}: a held-out document was read"
        assert max(per_token[t] for t in ids.tolist()) <= math.ceil(cap), name
    return {name: read[name] / train[name][2] for name in train}


def test_a_whole_multi_epoch_stream_reads_no_source_past_its_cap(planned):
    root, plan, train = planned
    epochs = read_whole_stream(plan, train, str(root / "cache"))
    # the caps bind: the plan takes crawl_high and math close to their caps, crawl_low to all its tokens
    assert epochs["crawl_high"] > 0.85 * SOURCES["crawl_high"][3]
    assert epochs["math"] > 0.85 * SOURCES["math"][3]


def test_every_sweep_plan_reads_no_source_past_its_cap(planned):
    # the epoch-estimation sweep as a user runs it; each of its plans is trained on like the main one
    root, main_plan, train = planned
    out, budget = root / "sweep", int(0.5 * main_plan["budget_tokens"])  # room in the crawl for math's 1 to 3 epochs
    args = [f"catalog={root / 'catalog.yaml'}", f"budget_tokens={budget}", f"out={out}", "quiet=true"]
    sweep = [f"seq_length={SEQ}", f"global_batch_size={GBS}", f"split={SPLIT}", "sweep.category=math"]
    assert main(["plan", *args, *sweep, "sweep.epochs=[1,2,3]"]) == 0
    index = json.loads((out / "sweep.json").read_text())["plans"]
    assert list(index) == ["1", "2", "3"]
    for k, path in index.items():
        plan = json.loads(open(path).read())
        assert (plan["seq_length"], plan["global_batch_size"]) == (SEQ, GBS)
        assert plan_matrix(load_plan(path)).sum() == pytest.approx(budget)
        epochs = read_whole_stream(plan, train, str(root / f"cache_sweep{k}"))
        # the swept source is read k epochs less at most the rounding reserve (plan_blend's formula; one prefix,
        # two phases) and a global batch of phase-end rounding, never past k epochs
        tokens = train["math"][2]
        reserve = SEQ * (math.ceil(int(k)) + 2 * (GBS + 2))
        assert int(k) * tokens - reserve - SEQ * GBS <= epochs["math"] * tokens <= int(k) * tokens, (k, epochs)


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
