"""``prepare``: stream raw reasoning records into a Megatron indexed dataset (and the SFT chat jsonl).

Data flow::

    files --(lazy read, parent)--> chunks of raw lines --(workers: parse, select, render, tokenize)-->
    ordered results --(parent: dedup, budgets, split)--> <prefix>.bin/.idx (IndexedDatasetBuilder), <prefix>.sft.jsonl,
    <prefix>.skipped.jsonl, <prefix>.stats.json

Memory stays flat in input size: the parent reads lines lazily and keeps at most ``2 * workers`` chunks in flight
(``Pool.imap`` would read the whole input ahead into its task queue, so the window is explicit here). What does grow is
inherent: megatron-core's index (one length per document) and, with ``select.dedup``, one 64-bit key per question.

Atomicity: every output is written under a temporary name next to its final one and renamed only after the whole
run succeeded (the ``.idx`` last, since it is what makes the pair a dataset). A fatal error or Ctrl-C removes the
temporary files, so no half-written dataset ever carries the final name.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from nemo_smartpt.reasoning.config import PrepareConfig, check_prepare_config
from nemo_smartpt.reasoning.schemas import MalformedRecordError, expand_inputs, iter_raw
from nemo_smartpt.reasoning.split import PRETRAIN, SFT, split_budgets
from nemo_smartpt.reasoning.worker import ERROR, OK, ChunkResult, RecordProcessor, init_worker, process_chunk

logger = logging.getLogger(__name__)

_SKIPPED_IN_STATS = 20
"""How many skipped records the stats file lists by name (all of them are in ``<prefix>.skipped.jsonl``)."""


def output_paths(cfg: PrepareConfig) -> dict[str, str]:
    """The final paths ``prepare`` writes, by role."""
    prefix = cfg.output_prefix
    paths = {
        "bin": prefix + ".bin",
        "idx": prefix + ".idx",
        "stats": prefix + ".stats.json",
        "skipped": prefix + ".skipped.jsonl",
    }
    if cfg.split.sft_fraction > 0.0:
        paths["sft"] = cfg.split.sft_output or prefix + ".sft.jsonl"
    return paths


class AtomicOutputs:
    """Temporary names for a set of final paths; :meth:`commit` renames them all, :meth:`discard` removes them."""

    def __init__(self, finals: dict[str, str]) -> None:
        self.finals = finals
        self.temps = {role: f"{path}.partial-{os.getpid()}" for role, path in finals.items()}

    def __getitem__(self, role: str) -> str:
        return self.temps[role]

    def commit(self) -> None:
        """Rename every temporary file to its final name; the index last."""
        for role in sorted(self.finals, key=lambda r: r == "idx"):
            os.replace(self.temps[role], self.finals[role])

    def discard(self) -> None:
        """Remove whatever temporary files exist."""
        for path in self.temps.values():
            if os.path.exists(path):
                os.remove(path)


def _chunks(files: list[str], chunk_size: int) -> Iterator[list[tuple[int, int, Any]]]:
    chunk: list[tuple[int, int, Any]] = []
    for file_index, path in enumerate(files):
        for line, payload in iter_raw(path):
            chunk.append((file_index, line, payload))
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _results(cfg: PrepareConfig, files: list[str], processor: RecordProcessor) -> Iterator[ChunkResult]:
    """Chunk results in input order, from this process (workers=1) or a pool with a bounded in-flight window."""
    chunks = _chunks(files, cfg.chunk_size)
    if cfg.workers == 1:
        for chunk in chunks:
            yield processor.process(chunk)
        return
    # spawn: workers import only the light modules (no torch), and no fork-with-threads hazards.
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(cfg.workers, initializer=init_worker, initargs=(cfg,))
    try:
        pending: deque = deque()
        window = 2 * cfg.workers
        for chunk in chunks:
            pending.append(pool.apply_async(process_chunk, (chunk,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the whole preparation described by ``cfg`` and return the stats (also written to the stats file).

    Raises:
        ReasoningDataError: a bad setting or input (subclasses name the field, file and line); with
            ``on_error=fail``, :class:`MalformedRecordError` for the first malformed record. Nothing is left under the
            final output names in that case.
    """
    check_prepare_config(cfg)
    with warnings.catch_warnings():
        # megatron.core's package import warns about optional GPU libraries that writing a dataset never uses.
        warnings.simplefilter("ignore", UserWarning)
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    files = expand_inputs(cfg.input)
    # Built here even when workers do the work: a bad tokenizer path or evaluation file fails before any process
    # starts, and the parent needs the token dtype and the evaluation-set size for the stats.
    processor = RecordProcessor(cfg)
    paths = output_paths(cfg)
    for path in paths.values():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    outputs = AtomicOutputs(paths)
    started = time.perf_counter()
    builder = None
    try:
        dtype = processor.dtype
        builder = IndexedDatasetBuilder(outputs["bin"], dtype=dtype)
        with (
            open(outputs["skipped"], "w", encoding="utf-8") as skipped_log,
            open(outputs.temps.get("sft", os.devnull), "w", encoding="utf-8") as sft_file,
        ):
            stats = _write(cfg, files, processor, builder, skipped_log, sft_file)
        builder.finalize(outputs["idx"])
        stats.update(
            output_prefix=cfg.output_prefix,
            outputs=paths,
            dtype=dtype.__name__,
            elapsed_s=round(time.perf_counter() - started, 3),
            config=asdict(cfg),
        )
        with open(outputs["stats"], "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        outputs.commit()
    except BaseException:
        if builder is not None and not builder.data_file.closed:
            builder.data_file.close()
        outputs.discard()
        raise
    return stats


def _write(cfg: PrepareConfig, files: list[str], processor: RecordProcessor, builder, skipped_log, sft_file) -> dict:
    """Consume ordered results: apply dedup, budgets and the split, write documents, count everything."""
    from tqdm import tqdm

    pretrain_budget, sft_budget = split_budgets(cfg.select.max_tokens, cfg.select.max_examples, cfg.split.sft_fraction)
    budgets = {PRETRAIN: pretrain_budget, SFT: sft_budget}
    domains: dict[str, dict[str, Counter]] = {PRETRAIN: {}, SFT: {}}
    skipped: Counter = Counter()
    skipped_examples: list[dict[str, Any]] = []
    seen: set[int] = set()
    records = repaired = 0
    stopped_at = None
    bar = tqdm(unit="doc", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True, desc="prepare")
    started = time.perf_counter()

    def skip(result, reason: str, message: str = "") -> None:
        skipped[reason] += 1
        entry = {"file": files[result.file_index], "line": result.line, "reason": reason}
        if message:
            entry["message"] = message
        skipped_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if len(skipped_examples) < _SKIPPED_IN_STATS:
            skipped_examples.append(entry)

    results = _results(cfg, files, processor)
    try:
        for chunk in results:
            offset = 0
            written = 0
            for result in chunk.records:
                records += 1
                repaired += result.utf8_repaired
                n = result.tokens if result.status == OK and result.side == PRETRAIN else 0
                ids = chunk.token_ids[offset : offset + n]
                offset += n
                if result.status == ERROR:
                    if cfg.on_error == "fail":
                        raise MalformedRecordError(
                            result.reason, result.message, files[result.file_index], result.line
                        )
                    if skipped[result.reason] < 3:
                        logger.warning("%s:%d: skipped: %s", files[result.file_index], result.line, result.message)
                    skip(result, result.reason, result.message)
                    continue
                if result.status != OK:
                    skip(result, result.reason)
                    continue
                if cfg.select.dedup and result.dedup_key in seen:
                    skip(result, "duplicate_question")
                    continue
                if not budgets[result.side].take(result.tokens):
                    skip(result, "budget_full" if result.side == PRETRAIN else "sft_budget_full")
                    continue
                if cfg.select.dedup:
                    # Marked only once taken: a copy skipped for budget does not shadow a later one that fits.
                    seen.add(result.dedup_key)
                per_domain = domains[result.side].setdefault(result.domain, Counter())
                per_domain["documents"] += 1
                per_domain["tokens"] += result.tokens
                if result.side == PRETRAIN:
                    builder.add_document(ids, [len(ids)])
                    written += 1
                else:
                    sft_file.write(result.sft_line)
            bar.update(written)
            rate = pretrain_budget.tokens / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
            if pretrain_budget.full and sft_budget.full:
                last = chunk.records[-1]
                stopped_at = f"{files[last.file_index]}:{last.line}"
                break
    finally:
        results.close()  # stops the worker pool now, also when a budget ends the run early
        bar.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    return {
        "inputs": files,
        "records_read": records,
        "documents": pretrain_budget.examples,
        "tokens": pretrain_budget.tokens,
        "tokens_per_s": round(pretrain_budget.tokens / elapsed, 1),
        "domains": {d: dict(c) for d, c in sorted(domains[PRETRAIN].items())},
        "sft": {
            "examples": sft_budget.examples,
            "tokens": sft_budget.tokens,
            "domains": {d: dict(c) for d, c in sorted(domains[SFT].items())},
        },
        "budget": {PRETRAIN: pretrain_budget.summary(), SFT: sft_budget.summary()},
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "skipped_examples": skipped_examples,
        "utf8_repaired": repaired,
        "decontamination": {
            "eval_documents": processor.decontam.documents if processor.decontam else 0,
            "ngram": cfg.select.decontam_ngram,
            "dropped": skipped.get("contaminated", 0),
        },
        "dedup_dropped": skipped.get("duplicate_question", 0),
        "stopped_early_at": stopped_at,
    }
