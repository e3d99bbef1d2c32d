"""Phased dataset on real megatron-core indexed datasets: ratios, boundaries, equality, continuity, resume.

Every token encodes where it came from (``source * 1e6 + document * 1e3 + position``), so a served sample can be traced
back to its documents.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

from nemo_smartpt.blend.phased_build import datasets_from_plan, phased_dataset_from_plan
from nemo_smartpt.blend.phased_dataset import PhasedDataset, PhasedDatasetConfig
from nemo_smartpt.blend.phased_spec import (
    PhasedDatasetError,
    PhaseSpec,
    SourceDataError,
    SourceSpec,
    phase_end_samples,
    phases_from_plan,
    round_half_up,
)
from nemo_smartpt.testing.distributed import free_port

SEQ = 16
GBS = 4
TOKENIZER = NullTokenizer(vocab_size=10**8)


def write_prefix(path: str, source: int, n_docs: int, seed: int, first_doc: int = 0) -> str:
    """Write an indexed dataset whose tokens are ``source*1e6 + doc*1e3 + position``."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(path + ".bin", dtype=np.int32)
    for doc in range(first_doc, first_doc + n_docs):
        n = int(rng.integers(8, 60))
        builder.add_document(torch.tensor(source * 1_000_000 + doc * 1000 + np.arange(n)), [n])
    builder.finalize(path + ".idx")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phased")
    sources = [
        SourceSpec("web", (write_prefix(str(root / "web"), 1, 300, 1),)),
        SourceSpec("math", (write_prefix(str(root / "math"), 2, 120, 2),)),
        # two prefixes read as one source; document ids continue so (source, doc) stays unique
        SourceSpec(
            "code", (write_prefix(str(root / "code_a"), 3, 60, 3), write_prefix(str(root / "code_b"), 3, 60, 4, 60))
        ),
    ]
    return root, sources


def config(root, **overrides) -> PhasedDatasetConfig:
    fields = dict(sequence_length=SEQ, global_batch_size=GBS, seed=7, path_to_cache=str(root / "cache"))
    fields.update(overrides)
    return PhasedDatasetConfig(**fields)


TWO_PHASES = [
    PhaseSpec("diverse", {"web": 0.6, "math": 0.25, "code": 0.15}, end_sample=1200),
    PhaseSpec("quality", {"web": 0.2, "math": 0.5, "code": 0.3}, end_sample=2400),
]


def decode(tokens: torch.Tensor) -> list[tuple[int, int, int]]:
    t = tokens.numpy().astype(np.int64)
    return list(zip((t // 1_000_000).tolist(), (t % 1_000_000 // 1000).tolist(), (t % 1000).tolist()))


def test_round_half_up_and_boundaries():
    assert [round_half_up(n, 4) for n in (5, 6, 7, 8)] == [1, 2, 2, 2]
    phases = [PhaseSpec("a", {}, end_token=16 * 1001), PhaseSpec("b", {}, end_token=16 * 2000 + 7)]
    # 1001 samples -> 1000 (nearest multiple of 4); 2000.4 -> 2000 samples
    assert phase_end_samples(phases, 16, 4) == [1000, 2000]
    # 1002 samples is exactly halfway between 1000 and 1004: rounded up
    assert phase_end_samples([PhaseSpec("a", {}, end_token=16 * 1002)], 16, 4) == [1004]
    with pytest.raises(PhasedDatasetError, match="'b' ends at sample 1000"):
        phase_end_samples([phases[0], PhaseSpec("b", {}, end_token=16 * 1001 + 3)], 16, 4)
    with pytest.raises(PhasedDatasetError, match="not a multiple of global_batch_size 4"):
        phase_end_samples([PhaseSpec("a", {}, end_sample=10)], 16, 4)


def test_plan_boundary_is_exact_and_batch_aligned(data_dir):
    root, sources = data_dir
    plan = {
        "budget_tokens": 2403 * SEQ,
        "seed": 3,
        "sources": [{"name": s.name, "prefixes": list(s.prefixes)} for s in sources],
        "phases": [
            {"name": "p1", "start_token": 0, "end_token": 1441 * SEQ + 5, "weights": {"web": 0.7, "math": 0.3}},
            {
                "name": "p2",
                "start_token": 1441 * SEQ + 5,
                "end_token": 2403 * SEQ,
                "weights": {"math": 0.5, "code": 0.5},
            },
        ],
        "baselines": {"natural": {"web": 0.5, "math": 0.25, "code": 0.25}, "random_order": {"web": 1.0}},
    }
    assert [p.end_token for p in phases_from_plan(plan)] == [1441 * SEQ + 5, 2403 * SEQ]
    ds = phased_dataset_from_plan(plan, config(root, create_attention_mask=False), TOKENIZER)
    assert ds.phase_ends == [1440, 2404] and len(ds) == 2404
    assert all(end % GBS == 0 for end in ds.phase_ends)
    phases = [ds[i]["phase"] for i in range(1430, 1450)]
    assert phases == [0] * 10 + [1] * 10
    assert {ds[i]["dataset_id"] for i in range(1440, 1500)} <= {1, 2}
    natural = phased_dataset_from_plan(plan, config(root, create_attention_mask=False), TOKENIZER, "natural")
    assert natural.phase_names == ["natural"] and len(natural) == 2404


def test_blend_ratios_per_phase(data_dir):
    root, sources = data_dir
    ds = PhasedDataset(sources, TWO_PHASES, config(root), TOKENIZER)
    for k, phase in enumerate(TWO_PHASES):
        counts = ds.source_samples(k)
        shares = counts / counts.sum()
        for i, name in enumerate(ds.source_names):
            assert abs(shares[i] - phase.weights[name]) < 0.005, (phase.name, name, shares)
    # the samples carry the same story
    ids = np.array([ds[i]["dataset_id"] for i in range(0, 1200)])
    assert abs((ids == 0).mean() - 0.6) < 0.005
    # the two code prefixes split the code weight by their token counts
    code = [c for c in ds._components if c.source == 2]
    served = np.bincount(ds.dataset_index[:], minlength=4)[[2, 3]]
    assert abs(served[0] / served.sum() - code[0].tokens / (code[0].tokens + code[1].tokens)) < 0.01


def megatron_blend(sources, weights, n, cfg: PhasedDatasetConfig):
    gpt_cfg = GPTDatasetConfig(
        random_seed=cfg.seed,
        sequence_length=cfg.sequence_length,
        blend=([s.prefixes[0] for s in sources], weights),
        split=cfg.split,
        path_to_cache=cfg.path_to_cache,
        tokenizer=TOKENIZER,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, [n, 0, 0], lambda: True, gpt_cfg).build()[0]


@pytest.mark.parametrize(
    ("continuity", "weights", "n"),
    [
        (True, [0.6, 0.3, 0.1], 700),  # every source within one epoch: continuity changes nothing
        (False, [0.2, 0.7, 0.1], 1600),  # math drawn ~2.6 epochs: megatron-core's own multi-epoch order
    ],
)
def test_one_phase_equals_megatron_blended_dataset(data_dir, continuity, weights, n):
    root, sources = data_dir
    sources = [sources[0], sources[1], SourceSpec("code", sources[2].prefixes[:1])]
    cfg = config(root, continuity=continuity)
    phase = PhaseSpec("only", dict(zip(["web", "math", "code"], weights)), end_sample=n)
    ours = PhasedDataset(sources, [phase], cfg, TOKENIZER)
    theirs = megatron_blend(sources, weights, n, cfg)
    assert len(theirs) >= n
    for i in range(n):
        a, b = ours[i], theirs[i]
        assert a["dataset_id"] == int(b["dataset_id"]) and a["phase"] == 0, i
        for key in ("tokens", "labels", "loss_mask", "position_ids", "attention_mask"):
            assert torch.equal(a[key], b[key]), (i, key)


def test_one_phase_with_continuity_differs_from_megatron_past_one_epoch(data_dir):
    """The third case of the docstring: math is drawn ~4 epochs, so with continuity its samples follow one shuffled
    epoch after another, not megatron-core's one shuffle over all epochs; web and code (under one epoch) still equal."""
    root, sources = data_dir
    sources = [sources[0], sources[1], SourceSpec("code", sources[2].prefixes[:1])]
    weights, n = [0.25, 0.7, 0.05], 1600
    cfg = config(root, continuity=True)
    ours = PhasedDataset(
        sources, [PhaseSpec("only", dict(zip(["web", "math", "code"], weights)), end_sample=n)], cfg, TOKENIZER
    )
    theirs = megatron_blend(sources, weights, n, cfg)
    assert ours.source_epochs()["math"] > 2 and ours.source_epochs()["web"] < 1
    same = {0: 0, 1: 0, 2: 0}
    total = {0: 0, 1: 0, 2: 0}
    for i in range(n):
        a, b = ours[i], theirs[i]
        assert a["dataset_id"] == int(b["dataset_id"]), i  # the same source for every sample
        total[a["dataset_id"]] += 1
        same[a["dataset_id"]] += int(torch.equal(a["tokens"], b["tokens"]))
    assert same[0] == total[0] and same[2] == total[2]  # under one epoch: equal
    assert same[1] < 0.05 * total[1], same  # past one epoch: (almost) every math sample differs


def source_streams(ds: PhasedDataset) -> dict[int, list]:
    streams: dict[int, list] = {}
    for i in range(len(ds)):
        sample = ds[i]
        streams.setdefault(sample["dataset_id"], []).append(decode(sample["tokens"]))
    return streams


def first_repeat(stream: list[list[tuple]]) -> tuple[int, set]:
    """Sample position where some token (source, doc, position) is served a second time; docs seen before it."""
    seen, docs = set(), set()
    for pos, sample in enumerate(stream):
        if seen.intersection(sample):
            return pos, docs
        seen.update(sample)
        docs.update((s, d) for s, d, _ in sample)
    return len(stream), docs


def test_continuity_no_document_repeats_before_exhaustion(data_dir):
    root, sources = data_dir
    ds = PhasedDataset(sources, TWO_PHASES, config(root, create_attention_mask=False), TOKENIZER)
    streams = source_streams(ds)
    # one stream per prefix: the two code prefixes (documents 0-59 and 60-119) interleave within their source
    prefix_streams = [streams[0], streams[1]]
    prefix_streams += [[x for x in streams[2] if x[0][1] < 60], [x for x in streams[2] if x[0][1] >= 60]]
    for c, stream in zip(ds._components, prefix_streams):
        epoch = len(c.datasets[0])
        assert len(c.datasets) >= 2 and len(stream) > epoch, "the test needs each prefix past its first epoch"
        repeat_at, docs = first_repeat(stream)
        assert repeat_at >= epoch, (c.prefix, repeat_at, epoch)
        # megatron drops the < seq_length tail tokens of an epoch: at most two documents go unseen
        assert len(docs) >= c.documents.size - 2, c.prefix
    # the stream positions of every prefix run 0, 1, 2, ... across the phase boundary
    for c in range(len(ds._components)):
        positions = ds.dataset_sample_index[ds.dataset_index[:] == c]
        assert np.array_equal(positions, np.arange(positions.size))


def test_megatron_order_repeats_documents_early(data_dir):
    """Why continuity exists: megatron-core's multi-epoch GPTDataset shuffles across epochs."""
    root, sources = data_dir
    ds = PhasedDataset(sources, TWO_PHASES, config(root, continuity=False, create_attention_mask=False), TOKENIZER)
    stream = source_streams(ds)[1]
    math = ds._components[1]
    epoch = (math.tokens - 1) // SEQ
    assert len(math.datasets) == 1 and len(stream) > 2 * epoch
    assert first_repeat(stream)[0] < epoch


def test_epochs_follow_the_plan(data_dir):
    root, sources = data_dir
    ds = PhasedDataset(sources, TWO_PHASES, config(root), TOKENIZER)
    tokens = {s.name: sum(c.tokens for c in ds._components if c.source == i) for i, s in enumerate(sources)}
    for name, epochs in ds.source_epochs().items():
        planned = sum(p.weights[name] * 1200 for p in TWO_PHASES) * SEQ / tokens[name]
        assert abs(epochs - planned) < 0.01 * planned


def test_resume_at_any_consumed_samples(data_dir):
    root, sources = data_dir
    cfg = config(root, create_attention_mask=False)
    full = PhasedDataset(sources, TWO_PHASES, cfg, TOKENIZER)
    for consumed in (0, 1, 1199, 1200, 1201, 1777, 2399):
        resumed = PhasedDataset(sources, TWO_PHASES, cfg, TOKENIZER)  # a new process would load the caches
        for i in range(consumed, min(consumed + 40, len(full))):
            a, b = full[i], resumed[i]
            assert torch.equal(a["tokens"], b["tokens"]) and a["phase"] == b["phase"], (consumed, i)


def test_deterministic_for_a_seed_and_cached(data_dir, tmp_path):
    root, sources = data_dir
    fresh = PhasedDataset(sources, TWO_PHASES, config(root, path_to_cache=str(tmp_path)), TOKENIZER)
    files = glob.glob(str(tmp_path / f"{fresh.unique_description_hash}-PhasedDataset-train-*"))
    assert len(files) == 4
    cached = PhasedDataset(sources, TWO_PHASES, config(root, path_to_cache=str(tmp_path)), TOKENIZER)
    assert isinstance(cached.dataset_index, np.memmap)
    other_seed = PhasedDataset(sources, TWO_PHASES, config(root, path_to_cache=str(tmp_path), seed=8), TOKENIZER)
    same = [torch.equal(fresh[i]["tokens"], cached[i]["tokens"]) for i in range(0, 2400, 13)]
    differ = [torch.equal(fresh[i]["tokens"], other_seed[i]["tokens"]) for i in range(0, 2400, 13)]
    assert all(same) and not all(differ)
    with pytest.raises(IndexError):
        fresh[2400]


def test_heldout_valid_and_test_splits(data_dir):
    root, sources = data_dir
    plan = {
        "budget_tokens": 800 * SEQ,
        "seed": 1,
        "sources": [{"name": s.name, "prefixes": list(s.prefixes)} for s in sources],
        "phases": [{"name": "p", "start_token": 0, "end_token": 800 * SEQ, "weights": {"web": 0.5, "math": 0.5}}],
        "baselines": {},
    }
    train, valid, test = datasets_from_plan(plan, config(root, split="80,10,10"), TOKENIZER, 64, 32)
    assert len(valid) == 64 and len(test) == 32
    train_docs = {(s, d) for i in range(len(train)) for s, d, _ in decode(train[i]["tokens"])}
    valid_docs = {(s, d) for i in range(len(valid)) for s, d, _ in decode(valid[i]["tokens"])}
    assert valid_docs and not valid_docs & train_docs
    assert {s for s, _ in valid_docs} == {1, 2}
    assert datasets_from_plan(plan, config(root), TOKENIZER, 64, 32)[1:] == (None, None)


# ---- bad input ---------------------------------------------------------------------------------------------------


def test_missing_files(data_dir, tmp_path):
    root, sources = data_dir
    gone = SourceSpec("gone", (str(tmp_path / "nothing"),))
    with pytest.raises(SourceDataError, match=r"source 'gone': file .*nothing\.idx not found"):
        PhasedDataset([gone], [PhaseSpec("p", {"gone": 1.0}, end_sample=8)], config(root), TOKENIZER)
    prefix = write_prefix(str(tmp_path / "nobin"), 5, 5, 0)
    os.remove(prefix + ".bin")
    with pytest.raises(SourceDataError, match=r"nobin\.bin not found"):
        PhasedDataset(
            [SourceSpec("x", (prefix,))], [PhaseSpec("p", {"x": 1.0}, end_sample=8)], config(root), TOKENIZER
        )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"garbage" + b[7:], "is not a Megatron indexed-dataset index"),
        (lambda b: b[:20], "is truncated"),
        (lambda b: b[: len(b) - 16], "is corrupt or truncated"),
    ],
)
def test_corrupt_idx(data_dir, tmp_path, damage, message):
    root, _ = data_dir
    prefix = write_prefix(str(tmp_path / "bad"), 5, 20, 0)
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    with open(prefix + ".idx", "wb") as f:
        f.write(damage(raw))
    with pytest.raises(SourceDataError, match=rf"source 'bad': .*bad\.idx {message}"):
        PhasedDataset(
            [SourceSpec("bad", (prefix,))], [PhaseSpec("p", {"bad": 1.0}, end_sample=8)], config(root), TOKENIZER
        )


def test_empty_source(data_dir, tmp_path):
    root, sources = data_dir
    empty = write_prefix(str(tmp_path / "empty"), 5, 0, 0)
    with pytest.raises(SourceDataError, match=r"source 'empty': .*empty is empty \(0 documents\)"):
        PhasedDataset(
            [sources[0], SourceSpec("empty", (empty,))],
            [PhaseSpec("p", {"web": 0.5, "empty": 0.5}, end_sample=8)],
            config(root),
            TOKENIZER,
        )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"web": 0.5, "math": 0.4}, r"phase 'p' weights sum to 0.9.*, not 1"),
        ({"web": 0.5, "maths": 0.5}, r"phase 'p' weights unknown source\(s\) \['maths'\]"),
        ({"web": 1.5, "math": -0.5}, r"phase 'p' has negative or NaN weights \{'math': -0.5\}"),
    ],
)
def test_bad_weights(data_dir, weights, message):
    root, sources = data_dir
    with pytest.raises(PhasedDatasetError, match=message):
        PhasedDataset(sources, [PhaseSpec("p", weights, end_sample=8)], config(root), TOKENIZER)


# ---- two gloo ranks ----------------------------------------------------------------------------------------------


def stream_digest(ds: PhasedDataset) -> np.ndarray:
    """Per sample: source, phase and the sum of its tokens (the tokens encode document and position)."""
    rows = [
        (s["dataset_id"], s["phase"], int(s["tokens"].sum()), int(s["labels"][-1]))
        for s in map(ds.__getitem__, range(len(ds)))
    ]
    return np.array(rows, dtype=np.int64)


def _rank_worker(rank: int, port: int, sources: list, cache: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = PhasedDatasetConfig(SEQ, GBS, seed=11, path_to_cache=cache, create_attention_mask=False)
        ds = PhasedDataset(sources, TWO_PHASES, cfg, TOKENIZER)
        np.save(os.path.join(out, f"rank{rank}.npy"), stream_digest(ds))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_same_stream_on_two_gloo_ranks(data_dir, tmp_path):
    root, sources = data_dir
    cache = str(tmp_path / "shared_cache")
    # fork: the children inherit the imported megatron-core (a fresh import costs ~5-8 s per process on 2 cores)
    torch.multiprocessing.start_processes(
        _rank_worker, args=(free_port(), sources, cache, str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    reference = stream_digest(
        PhasedDataset(
            sources,
            TWO_PHASES,
            PhasedDatasetConfig(SEQ, GBS, seed=11, create_attention_mask=False, path_to_cache=str(tmp_path / "solo")),
            TOKENIZER,
        )
    )
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), reference), rank
    # rank 0 wrote the blend cache once; rank 1 loaded it
    assert len(glob.glob(os.path.join(cache, "*-PhasedDataset-train-dataset_index.npy"))) == 1
