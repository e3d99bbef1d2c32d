"""Benchmark: phased dataset (continuity on) vs megatron-core's BlendedDataset for the same number of samples.

Writes four synthetic sources (uint16 tokens, sized so the run reads each about three times), then measures:

- index build time from a cold cache (best of ``--repeats``; each build gets a fresh ``path_to_cache``);
- peak memory of a build (tracemalloc peak, which numpy's allocations report to);
- per-sample fetch time, random and sequential, over ``--fetch`` samples; the two datasets are timed in alternating
  blocks of 5,000 samples so that load from other processes hits both alike.

Usage::

    python benchmarks/bench_phased_dataset.py                  # 10M samples of 64 tokens (the default)
    python benchmarks/bench_phased_dataset.py --samples 200000 --fetch 20000   # quick
    SMARTPT_BENCH_SAMPLES=1000000 python benchmarks/bench_phased_dataset.py
    python benchmarks/bench_phased_dataset.py --index-check 10000000   # .idx validation cost, 10M documents

Goal (issue 3): build <= 1.2x and fetch <= 1.1x of plain megatron-core. Goal (issue 12): validating a
10-million-document ``.idx`` (what ``smartpt plan`` does for every prefix) takes under one second.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

from nemo_smartpt.blend.phased_dataset import PhasedDataset, PhasedDatasetConfig
from nemo_smartpt.blend.phased_spec import PhaseSpec, SourceSpec

NAMES = ("web", "books", "math", "code")
PHASE_WEIGHTS = (
    {"web": 0.4, "books": 0.3, "math": 0.2, "code": 0.1},
    {"web": 0.1, "books": 0.2, "math": 0.3, "code": 0.4},
)
PHASE_SHARES = (0.6, 0.4)
# Each source holds a quarter of the run's tokens divided by this, so the plan reads it about this many times.
EPOCHS = 3
TOKENIZER = NullTokenizer(vocab_size=32000)


def write_sources(root: str, total_tokens: int) -> list[SourceSpec]:
    """Write the four sources: documents of 200-2,000 tokens."""
    rng = np.random.default_rng(0)
    per_source = total_tokens // (len(NAMES) * EPOCHS)
    sources = []
    for name in NAMES:
        prefix = os.path.join(root, name)
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
        tokens = rng.integers(0, 31999, size=per_source, dtype=np.uint16)
        cuts = np.cumsum(rng.integers(200, 2000, size=per_source // 200 + 1))
        cuts = np.concatenate([[0], cuts[cuts < per_source], [per_source]])
        for beg, end in zip(cuts[:-1], cuts[1:]):
            builder.add_document(tokens[beg:end], [int(end - beg)])
        builder.finalize(prefix + ".idx")
        sources.append(SourceSpec(name, (prefix,)))
    return sources


def aggregate_weights() -> list[float]:
    return [sum(share * w[n] for share, w in zip(PHASE_SHARES, PHASE_WEIGHTS)) for n in NAMES]


def build_ours(sources, samples: int, seq: int, cache: str) -> PhasedDataset:
    first = int(samples * PHASE_SHARES[0])
    phases = [
        PhaseSpec("p1", PHASE_WEIGHTS[0], end_sample=first),
        PhaseSpec("p2", PHASE_WEIGHTS[1], end_sample=samples),
    ]
    cfg = PhasedDatasetConfig(seq, 1, seed=1, path_to_cache=cache, continuity=True, create_attention_mask=False)
    return PhasedDataset(sources, phases, cfg, TOKENIZER)


def build_megatron(sources, samples: int, seq: int, cache: str):
    cfg = GPTDatasetConfig(
        random_seed=1,
        sequence_length=seq,
        blend=([s.prefixes[0] for s in sources], aggregate_weights()),
        split="100,0,0",
        path_to_cache=cache,
        tokenizer=TOKENIZER,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, cfg).build()[0]


def timed_build(build, sources, samples, seq, root, tag, repeats):
    best = float("inf")
    for r in range(repeats):
        cache = os.path.join(root, f"cache-{tag}-{r}")
        t = time.perf_counter()
        dataset = build(sources, samples, seq, cache)
        best = min(best, time.perf_counter() - t)
    return dataset, best


def peak_memory(build, sources, samples, seq, root, tag) -> int:
    tracemalloc.start()
    build(sources, samples, seq, os.path.join(root, f"cache-mem-{tag}"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def fetch_times(datasets, indices: np.ndarray, block: int = 5000) -> list[float]:
    totals = [0.0] * len(datasets)
    for beg in range(0, len(indices), block):
        chunk = indices[beg : beg + block].tolist()
        for k, ds in enumerate(datasets):
            t = time.perf_counter()
            for i in chunk:
                ds[i]
            totals[k] += time.perf_counter() - t
    return [t / len(indices) for t in totals]


def write_index(prefix: str, documents: int) -> None:
    """A valid ``.idx`` of ``documents`` one-sequence documents (1-2048 uint16 tokens) written with numpy in megatron-core's
    layout, and a sparse ``.bin`` of the matching size (validation reads only the index and the ``.bin``'s size)."""
    from nemo_smartpt.blend.index_check import HEADER, INDEX_MAGIC

    lengths = np.random.default_rng(0).integers(1, 2049, size=documents, dtype=np.int32)
    pointers = np.zeros(documents, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 2, out=pointers[1:])
    with open(prefix + ".idx", "wb") as f:
        f.write(HEADER.pack(INDEX_MAGIC, 1, 8, documents, documents + 1))  # dtype code 8 = uint16
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(documents + 1, dtype=np.int64).tobytes())
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(pointers[-1]) + 2 * int(lengths[-1]))


def bench_index_check(root: str, documents: int, repeats: int) -> None:
    from nemo_smartpt.blend.index_check import validate_index

    prefix = os.path.join(root, "big")
    write_index(prefix, documents)
    times, cpu = [], []
    for _ in range(max(repeats, 3)):
        t, c = time.perf_counter(), time.process_time()
        summary = validate_index(prefix)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    size = os.path.getsize(prefix + ".idx") / 2**20
    # CPU time too: on a shared machine the wall clock also counts other processes' turns
    print(
        f"index check: {summary.documents:,} documents, {size:.0f} MiB .idx: wall best {min(times):.3f} s, "
        f"worst {max(times):.3f} s; CPU best {min(cpu):.3f} s over {len(times)} runs (goal < 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=int(os.environ.get("SMARTPT_BENCH_SAMPLES", 10_000_000)))
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--fetch", type=int, default=200_000, help="samples per fetch pattern")
    parser.add_argument("--repeats", type=int, default=2, help="cold builds per dataset (best is reported)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed after)")
    parser.add_argument("--index-check", type=int, default=0, metavar="N", help="only time .idx validation of N docs")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # megatron-core logs every index it builds
    if args.dir is not None and not os.path.isdir(args.dir):
        sys.exit(f"bench_phased_dataset.py: error: --dir {args.dir}: no such directory (create it or omit --dir)")

    root = args.dir or tempfile.mkdtemp(prefix="bench_phased_")
    try:
        if args.index_check:
            bench_index_check(root, args.index_check, args.repeats)
            return
        t = time.perf_counter()
        sources = write_sources(root, args.samples * args.seq_length)
        print(f"wrote {len(sources)} sources in {time.perf_counter() - t:.1f}s under {root}")

        megatron, t_megatron = timed_build(
            build_megatron, sources, args.samples, args.seq_length, root, "m", args.repeats
        )
        ours, t_ours = timed_build(build_ours, sources, args.samples, args.seq_length, root, "p", args.repeats)
        mem_megatron = peak_memory(build_megatron, sources, args.samples, args.seq_length, root, "m")
        mem_ours = peak_memory(build_ours, sources, args.samples, args.seq_length, root, "p")

        rng = np.random.default_rng(0)
        n = min(args.fetch, args.samples)
        random_idx = rng.integers(0, args.samples, size=n)
        start = int(rng.integers(0, args.samples - n + 1))
        sequential_idx = np.arange(start, start + n)
        fetch_random = fetch_times([ours, megatron], random_idx)
        fetch_sequential = fetch_times([ours, megatron], sequential_idx)

        print(f"samples={args.samples:,} seq_length={args.seq_length} epochs per source: {ours.source_epochs()}")
        print(f"build       ours {t_ours:8.3f} s   megatron {t_megatron:8.3f} s   ratio {t_ours / t_megatron:.3f}")
        print(
            f"peak memory ours {mem_ours / 2**20:8.1f} MiB megatron {mem_megatron / 2**20:8.1f} MiB "
            f"ratio {mem_ours / mem_megatron:.3f}"
        )
        for label, (a, b) in (("random", fetch_random), ("sequential", fetch_sequential)):
            print(f"fetch {label:10s} ours {a * 1e6:7.2f} us megatron {b * 1e6:7.2f} us   ratio {a / b:.3f}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
