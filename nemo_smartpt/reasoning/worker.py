"""The per-record pipeline that runs in the tokenizing workers: decode -> parse -> select -> render -> tokenize.

Everything here is a pure function of one record (plus the read-only tokenizer and decontamination index the worker
builds once), so the result does not depend on which worker handles a record. What needs the whole stream
(de-duplication, budgets, the writes) happens in the parent, in input order: that is what makes the output bytes
identical for any worker count.

A chunk goes in as ``[(file_index, line, payload), ...]`` and comes out as a :class:`ChunkResult`: one
:class:`RecordResult` per record and the token ids of the pretraining-side documents concatenated in one array
(one pickle per chunk instead of one per document).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from nemo_smartpt.reasoning.config import PrepareConfig
from nemo_smartpt.reasoning.outputs import quiet_worker_signals
from nemo_smartpt.reasoning.render import normalise_markers, render_messages, render_text
from nemo_smartpt.reasoning.schemas import (
    MalformedRecordError,
    ReasoningExample,
    decode_payload,
    group_label,
    parse_record,
)
from nemo_smartpt.reasoning.select import (
    DecontamIndex,
    filter_reason,
    label_domain,
    record_key_text,
    stable_hash,
)
from nemo_smartpt.reasoning.split import PRETRAIN, SFT, chat_line, side_of
from nemo_smartpt.reasoning.tokenizer import load_tokenizer

OK, FILTERED, ERROR = "ok", "filtered", "error"


class RecordResult(NamedTuple):
    """What the parent needs to know about one record."""

    file_index: int
    line: int
    status: str
    """``ok``, ``filtered`` (a selection rule dropped it) or ``error`` (malformed)."""
    reason: str = ""
    """Reason code for ``filtered``/``error``."""
    message: str = ""
    domain: str = ""
    dedup_key: int = 0
    side: str = PRETRAIN
    tokens: int = 0
    """Document length in tokens, EOD included (counted for both sides, in the same unit)."""
    sft_line: str = ""
    """The chat jsonl line, for SFT-side examples only."""
    utf8_repaired: bool = False
    group: str = ""
    """The ``group_by`` label of the record (empty without ``group_by``)."""


class ChunkResult(NamedTuple):
    records: list[RecordResult]
    token_ids: np.ndarray
    """The pretraining-side documents of the chunk, each followed by EOD, in record order."""


def output_dtype(vocab_size: int) -> type[np.number]:
    """The smallest token dtype megatron-core's indexed dataset supports for ``vocab_size`` (uint16 below 65500)."""
    return np.uint16 if vocab_size < 65500 else np.int32


class RecordProcessor:
    """Holds the per-process state (tokenizer, decontamination n-grams) and processes chunks."""

    def __init__(self, cfg: PrepareConfig, decontam: DecontamIndex | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer, cfg.eod_token)
        self.decontam = decontam if decontam is not None else DecontamIndex.from_config(cfg.select)
        self.dtype = output_dtype(self.tokenizer.vocab_size)
        self.eod = np.array([self.tokenizer.eod], dtype=self.dtype)

    def _prepare_one(self, file_index: int, line: int, payload: Any) -> tuple[RecordResult, str | None]:
        cfg = self.cfg
        try:
            obj, repaired = decode_payload(payload, cfg.encoding_errors)
            record = parse_record(obj, cfg.format, cfg.mapping)
            group = group_label(obj, cfg.group_by) if cfg.group_by else ""
        except MalformedRecordError as exc:
            return RecordResult(file_index, line, ERROR, exc.reason, exc.message), None
        domain = label_domain(record, cfg.select)
        reason = filter_reason(record, domain, cfg.select)
        if reason:
            return RecordResult(file_index, line, FILTERED, reason, "", domain, utf8_repaired=repaired), None
        is_example = isinstance(record, ReasoningExample)
        if is_example:
            text = render_text(record, cfg.render)
        else:
            text = normalise_markers(record.text) if cfg.render.normalise_text_docs else record.text
        if not text.strip():
            return RecordResult(file_index, line, FILTERED, "empty_text", "", domain, utf8_repaired=repaired), None
        if self.decontam is not None and self.decontam.contaminated(text):
            return RecordResult(file_index, line, FILTERED, "contaminated", "", domain, utf8_repaired=repaired), None
        key_text = record_key_text(record)
        dedup_key = stable_hash(key_text) if cfg.select.dedup else 0
        side = PRETRAIN
        if is_example and cfg.split.sft_fraction > 0.0:
            side = side_of(stable_hash(key_text, cfg.split.salt), cfg.split.sft_fraction)
        sft = chat_line(render_messages(record, cfg.render)) if side == SFT else ""
        result = RecordResult(file_index, line, OK, "", "", domain, dedup_key, side, 0, sft, repaired, group)
        return result, text

    def process(self, chunk: list[tuple[int, int, Any]]) -> ChunkResult:
        """Run the pipeline over one chunk of raw records."""
        results: list[RecordResult] = []
        texts: list[str] = []
        for file_index, line, payload in chunk:
            result, text = self._prepare_one(file_index, line, payload)
            results.append(result)
            if text is not None:
                texts.append(text)
        encoded = iter(self.tokenizer.encode_arrays(texts))
        pieces: list[np.ndarray] = []
        max_tokens = self.cfg.max_doc_tokens
        for i, result in enumerate(results):
            if result.status != OK:
                continue
            ids = next(encoded)
            n_tokens = len(ids) + 1
            if max_tokens and n_tokens > max_tokens:
                results[i] = result._replace(status=FILTERED, reason="too_long", sft_line="")
                continue
            results[i] = result._replace(tokens=n_tokens)
            if result.side == PRETRAIN:
                pieces.append(ids.astype(self.dtype, copy=False))
                pieces.append(self.eod)
        token_ids = np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)
        return ChunkResult(results, token_ids)


_PROCESSOR: RecordProcessor | None = None


def init_worker(cfg: PrepareConfig) -> None:
    """Pool initializer: build this process's tokenizer and decontamination index once."""
    global _PROCESSOR
    quiet_worker_signals()
    # Each worker is one core's worth of tokenizing; Rust-side threads on top would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _PROCESSOR = RecordProcessor(cfg)


def process_chunk(chunk: list[tuple[int, int, Any]]) -> ChunkResult:
    """Pool task: process one chunk with the worker's processor."""
    if _PROCESSOR is None:
        raise RuntimeError("process_chunk called outside a worker started with init_worker")
    return _PROCESSOR.process(chunk)
