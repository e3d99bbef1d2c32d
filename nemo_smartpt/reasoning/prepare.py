"""``prepare``: stream raw reasoning records into a Megatron indexed dataset (and the SFT chat jsonl).

Data flow::

    files --(lazy read, parent)--> chunks of raw lines --(workers: parse, select, render, tokenize)-->
    ordered results --(parent: dedup, budgets, split)--> <prefix>.bin/.idx (IndexedDatasetBuilder), <prefix>.sft.jsonl,
    <prefix>.skipped.jsonl, <prefix>.stats.json

Memory stays flat in input size: the parent reads lines lazily and keeps at most ``2 * workers`` chunks in flight
(``Pool.imap`` would read the whole input ahead into its task queue, so the window is explicit here). What does grow is
inherent: megatron-core's index (one length per document) and, with ``select.dedup``, one 64-bit key per question.

Atomicity and safety (:mod:`nemo_smartpt.reasoning.outputs`): every output is written under a temporary name next to
its final one and renamed only after the whole run succeeded (the ``.idx`` last). A fatal error, Ctrl-C, SIGTERM or
SIGHUP removes the temporary files, so no half-written dataset ever carries the final name. An output that is an
input, an existing dataset (without ``overwrite=true``) or a directory-like prefix is refused before anything is read.

A run that writes zero documents fails with the reason (``allow_empty=true`` accepts it); a decontamination that drops
more than half of the records read adds a warning with the counts to the stats (the CLI prints it).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from nemo_smartpt.reasoning.config import PrepareConfig, check_prepare_config
from nemo_smartpt.reasoning.errors import ReasoningDataError
from nemo_smartpt.reasoning.outputs import (
    AtomicOutputs,
    OutputPathError,
    check_existing,
    check_not_inputs,
    check_prefix,
    family,
    remove_stale_partials,
    signals_held,
)
from nemo_smartpt.reasoning.schemas import MalformedRecordError, expand_inputs, iter_raw
from nemo_smartpt.reasoning.split import PRETRAIN, SFT, split_budgets
from nemo_smartpt.reasoning.worker import ERROR, OK, ChunkResult, RecordProcessor, init_worker, process_chunk

logger = logging.getLogger(__name__)

_SKIPPED_IN_STATS = 20
"""How many skipped records the stats file lists by name (all of them are in ``<prefix>.skipped.jsonl``)."""

DECONTAM_WARN_FRACTION = 0.5
"""A decontamination that drops more than this share of the records read is reported as a warning."""


class EmptyOutputError(ReasoningDataError):
    """The run would write a dataset with zero documents (and ``allow_empty`` is off)."""


def output_paths(cfg: PrepareConfig) -> dict[str, str]:
    """The final paths ``prepare`` writes, by role."""
    prefix = cfg.output_prefix
    paths = {"stats": prefix + ".stats.json", "skipped": prefix + ".skipped.jsonl"}
    if not cfg.group_by:  # with group_by the datasets are <prefix>_<label>, known only once the labels are read
        paths.update(bin=prefix + ".bin", idx=prefix + ".idx")
    if cfg.split.sft_fraction > 0.0:
        paths["sft"] = cfg.split.sft_output or prefix + ".sft.jsonl"
    return paths


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
    pool = None
    try:
        with signals_held():  # a signal while the pool starts takes effect once `pool` exists, at the block's end
            pool = ctx.Pool(cfg.workers, initializer=init_worker, initargs=(cfg,))
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
        if pool is not None:
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

    check_prefix(cfg.output_prefix)
    files = expand_inputs(cfg.input)
    paths = output_paths(cfg)
    check_not_inputs(
        paths,
        files
        + (
            expand_inputs(",".join(cfg.select.decontam_paths), "select.decontam_paths")
            if cfg.select.decontam_paths
            else []
        ),
        {"sft": "split.sft_output"},
    )
    stale = check_existing([cfg.output_prefix], paths.values(), cfg.overwrite) + _old_groups(cfg)
    removed_partials = remove_stale_partials(paths.values())
    # Built here even when workers do the work: a bad tokenizer path or evaluation file fails before any process
    # starts, and the parent needs the token dtype and the evaluation-set size for the stats.
    processor = RecordProcessor(cfg)
    for path in paths.values():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    outputs = AtomicOutputs(paths)
    started = time.perf_counter()
    datasets = _Datasets(cfg, outputs, processor.dtype, IndexedDatasetBuilder)
    try:
        with (
            open(outputs["skipped"], "w", encoding="utf-8") as skipped_log,
            open(outputs.temps.get("sft", os.devnull), "w", encoding="utf-8") as sft_file,
        ):
            stats = _write(cfg, files, processor, datasets, skipped_log, sft_file)
        _check_output(cfg, stats)
        datasets.finalize()
        stats.update(
            output_prefix=cfg.output_prefix,
            outputs=dict(outputs.finals),
            groups=datasets.summary(),
            removed_partial_files=removed_partials,
            removed_stale_files=outputs.leftovers(stale),
            dtype=processor.dtype.__name__,
            elapsed_s=round(time.perf_counter() - started, 3),
            config=asdict(cfg),
        )
        with open(outputs["stats"], "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        outputs.commit(stale)
    except BaseException:
        datasets.close()
        outputs.discard()
        raise
    return stats


def _old_groups(cfg: PrepareConfig) -> list[str]:
    """The group datasets an earlier ``group_by`` run listed in its stats file (stale once this run replaces it)."""
    try:
        with open(cfg.output_prefix + ".stats.json", encoding="utf-8") as handle:
            old = json.load(handle).get("groups") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return [p for entry in old.values() if isinstance(entry, dict) for p in family(str(entry.get("prefix", "")))]


def _check_output(cfg: PrepareConfig, stats: dict[str, Any]) -> None:
    """Zero documents is an error with its reason; a decontamination that drops most records is a warning."""
    stats["warnings"] = []
    dropped, records = stats["decontamination"]["dropped"], stats["records_read"]
    if records and dropped > DECONTAM_WARN_FRACTION * records:
        message = (
            f"decontamination dropped {dropped} of {records} records ({100 * dropped / records:.0f}%) against "
            f"{stats['decontamination']['eval_documents']} evaluation documents (select.decontam_paths, "
            f"{stats['decontamination']['ngram']}-grams); check that the evaluation files are not the training data"
        )
        stats["warnings"].append(message)
        logger.warning(message)
    if stats["documents"] or cfg.allow_empty:
        return
    if not records:
        why = f"input {cfg.input!r} holds no records"
    else:
        reasons = ", ".join(f"{k}={v}" for k, v in stats["skipped"].items()) or "none"
        why = f"all {records} records read were skipped ({reasons}; see the skipped reasons above)"
    raise EmptyOutputError(
        f"no documents to write to {cfg.output_prefix}: {why}; nothing was written (allow_empty=true writes an "
        f"empty dataset)"
    )


_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class _Datasets:
    """The indexed datasets of one run: one, or one per ``group_by`` label (opened when the label first appears)."""

    def __init__(self, cfg: PrepareConfig, outputs: AtomicOutputs, dtype, builder_cls) -> None:
        self.cfg, self.outputs, self.dtype, self.builder_cls = cfg, outputs, dtype, builder_cls
        self.builders: dict[str, Any] = {}
        self.counts: dict[str, list[int]] = {}
        self.prefixes: dict[str, str] = {}
        if not cfg.group_by:
            self.builders[""] = builder_cls(outputs["bin"], dtype=dtype)
            self.prefixes[""] = cfg.output_prefix

    def _open(self, label: str) -> Any:
        safe = _LABEL_CHARS.sub("_", label).strip("_") or "_"
        prefix = f"{self.cfg.output_prefix}_{safe}"
        clash = [other for other, p in self.prefixes.items() if p == prefix]
        if clash:
            raise OutputPathError(
                f"group_by labels {clash[0]!r} and {label!r} both map to the dataset prefix {prefix}; rename one"
            )
        finals = [prefix + ".bin", prefix + ".idx"]
        check_existing([], finals, self.cfg.overwrite)
        remove_stale_partials(finals)
        self.outputs.add(f"idx:{label}", finals[1])
        self.prefixes[label] = prefix
        builder = self.builder_cls(self.outputs.add(f"bin:{label}", finals[0]), dtype=self.dtype)
        self.builders[label] = builder
        return builder

    def add(self, label: str, ids) -> None:
        builder = self.builders.get(label) or self._open(label)
        builder.add_document(ids, [len(ids)])
        count = self.counts.setdefault(label, [0, 0])
        count[0] += 1
        count[1] += len(ids)

    def finalize(self) -> None:
        for label, builder in self.builders.items():
            builder.finalize(self.outputs["idx" if not self.cfg.group_by else f"idx:{label}"])

    def close(self) -> None:
        for builder in self.builders.values():
            if not builder.data_file.closed:
                builder.data_file.close()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per ``group_by`` label: its dataset prefix, documents and tokens (empty without ``group_by``)."""
        if not self.cfg.group_by:
            return {}
        return {
            label: {"prefix": self.prefixes[label], "documents": docs, "tokens": tokens}
            for label, (docs, tokens) in sorted(self.counts.items())
        }


def _write(cfg: PrepareConfig, files: list[str], processor: RecordProcessor, datasets, skipped_log, sft_file) -> dict:
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
                    datasets.add(result.group, ids)
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
        "empty_documents": skipped.get("empty_text", 0),
        "stopped_early_at": stopped_at,
    }
