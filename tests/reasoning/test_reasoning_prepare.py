"""``prepare`` end to end: round trip through megatron-core's IndexedDataset, stats, errors, atomic outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nemo_smartpt.reasoning.config import PrepareConfig
from nemo_smartpt.reasoning.prepare import prepare
from nemo_smartpt.reasoning.render import RenderConfig, render_text
from nemo_smartpt.reasoning.schemas import (
    MalformedRecordError,
    ReasoningExample,
    decode_payload,
    iter_raw,
    parse_record,
)
from nemo_smartpt.reasoning.select import SelectConfig
from nemo_smartpt.reasoning.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"


def read_docs(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    assert len(ds.document_indices) == len(ds) + 1  # one sequence per document
    return [ds[i].tolist() for i in range(len(ds))]


def expected_texts(name: str, fmt: str) -> list[str]:
    out = []
    for _, payload in iter_raw(str(DATA / name)):
        rec = parse_record(decode_payload(payload, "replace")[0], fmt)
        out.append(render_text(rec, RenderConfig()) if isinstance(rec, ReasoningExample) else rec.text)
    return out


def small_bpe(directory: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["<think> the answer is </think>"] * 10, trainer)
    tok.save(str(directory / "tokenizer.json"))
    return str(directory)


@pytest.mark.parametrize("tokenizer", ["byte", "hf"])
@pytest.mark.parametrize(
    ("name", "fmt"), [("openthoughts_114k.jsonl", "openthoughts"), ("nemotron.jsonl", "nemotron")]
)
def test_round_trip_token_ids(tmp_path, tokenizer, name, fmt):
    spec = small_bpe(tmp_path) if tokenizer == "hf" else "byte"
    prefix = str(tmp_path / "out" / "ds")
    stats = prepare(
        PrepareConfig(input=str(DATA / name), output_prefix=prefix, format=fmt, tokenizer=spec, progress=False)
    )
    tok = load_tokenizer(spec)
    texts = expected_texts(name, fmt)
    want = [ids + [tok.eod] for ids in tok.encode_batch(texts)]
    assert read_docs(prefix) == want
    assert stats["documents"] == len(texts) and stats["tokens"] == sum(map(len, want))
    assert sum(d["tokens"] for d in stats["domains"].values()) == stats["tokens"]
    on_disk = json.loads(Path(prefix + ".stats.json").read_text())
    assert on_disk["documents"] == stats["documents"]
    assert not [p for p in os.listdir(tmp_path / "out") if ".partial" in p]


def test_stats_domains_and_text_format(tmp_path):
    prefix = str(tmp_path / "t")
    stats = prepare(PrepareConfig(input=str(DATA / "openthoughts3.jsonl"), output_prefix=prefix, progress=False))
    # labels from the data's own field: math, biology -> science, math
    assert stats["domains"]["math"]["documents"] == 2 and stats["domains"]["science"]["documents"] == 1
    stats = prepare(
        PrepareConfig(
            input=str(DATA / "text.jsonl"), output_prefix=prefix, format="text", progress=False, overwrite=True
        )
    )
    assert read_docs(prefix)[1] == list(b"def add(a, b):\n    return a + b\n") + [256]
    assert stats["domains"]["code"]["documents"] == 1


def test_malformed_records_skipped_with_file_and_line(tmp_path):
    prefix = str(tmp_path / "m")
    stats = prepare(PrepareConfig(input=str(DATA / "malformed.jsonl"), output_prefix=prefix, progress=False))
    assert stats["documents"] == 2 and stats["skipped_total"] == 4
    assert stats["skipped"] == {"bad_type": 1, "invalid_json": 1, "missing_field": 1, "not_an_object": 1}
    log = [json.loads(line) for line in Path(prefix + ".skipped.jsonl").read_text().splitlines()]
    assert [(e["line"], e["reason"]) for e in log] == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "bad_type"),
        (5, "missing_field"),
    ]
    assert all(e["file"].endswith("malformed.jsonl") for e in log)


def test_fatal_error_leaves_no_output(tmp_path):
    prefix = str(tmp_path / "f")
    cfg = PrepareConfig(input=str(DATA / "malformed.jsonl"), output_prefix=prefix, on_error="fail", progress=False)
    with pytest.raises(MalformedRecordError) as err:
        prepare(cfg)
    assert err.value.line == 2 and str(err.value).startswith(f"{DATA / 'malformed.jsonl'}:2: ")
    assert os.listdir(tmp_path) == []


def test_failure_keeps_previous_output_intact(tmp_path, monkeypatch):
    prefix = str(tmp_path / "p")
    prepare(PrepareConfig(input=str(DATA / "text.jsonl"), output_prefix=prefix, progress=False))
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    import nemo_smartpt.reasoning.prepare as mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "_write", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            PrepareConfig(input=str(DATA / "nemotron.jsonl"), output_prefix=prefix, progress=False, overwrite=True)
        )
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_non_utf8_repaired_and_counted(tmp_path):
    prefix = str(tmp_path / "u")
    stats = prepare(PrepareConfig(input=str(DATA / "non_utf8.jsonl"), output_prefix=prefix, progress=False))
    assert stats["utf8_repaired"] == 1 and stats["documents"] == 2
    assert read_docs(prefix)[0][:6] == list("café".replace("é", "\ufffd").encode())[:6]
    stats = prepare(
        PrepareConfig(
            input=str(DATA / "non_utf8.jsonl"),
            output_prefix=prefix,
            encoding_errors="strict",
            progress=False,
            overwrite=True,
        )
    )
    assert stats["skipped"] == {"invalid_utf8": 1}


def test_parquet_input_matches_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "openthoughts3.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ot3.parquet")
    prepare(PrepareConfig(input=str(tmp_path / "ot3.parquet"), output_prefix=str(tmp_path / "pq"), progress=False))
    prepare(PrepareConfig(input=str(DATA / "openthoughts3.jsonl"), output_prefix=str(tmp_path / "js"), progress=False))
    assert (tmp_path / "pq.bin").read_bytes() == (tmp_path / "js.bin").read_bytes()
    assert (tmp_path / "pq.idx").read_bytes() == (tmp_path / "js.idx").read_bytes()


def test_selection_filters_decontamination_and_long_docs(tmp_path):
    rows = [
        {"text": "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May. Ok"},
        {"text": "An unrelated document about cells and energy."},
        {"text": "x" * 5000},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    select = SelectConfig(decontam_paths=[str(DATA / "eval_set.jsonl")])
    cfg = PrepareConfig(input=str(src), output_prefix=str(tmp_path / "d"), select=select, max_doc_tokens=1000)
    cfg.progress = False
    stats = prepare(cfg)
    assert stats["decontamination"] == {"eval_documents": 1, "ngram": 13, "dropped": 1}
    assert stats["skipped"] == {"contaminated": 1, "too_long": 1} and stats["documents"] == 1
    assert stats["domains"] == {"science": {"documents": 1, "tokens": 46}}


def test_quality_filters_in_prepare(tmp_path):
    select = SelectConfig(require_answer=True, min_thought_chars=1)
    cfg = PrepareConfig(input=str(DATA / "openthoughts_114k.jsonl"), output_prefix=str(tmp_path / "q"), select=select)
    cfg.progress = False
    stats = prepare(cfg)
    assert stats["skipped"] == {"no_answer": 1, "thought_too_short": 1} and stats["documents"] == 2


def test_token_dtype_is_uint16_for_small_vocab(tmp_path):
    prefix = str(tmp_path / "dt")
    stats = prepare(PrepareConfig(input=str(DATA / "text.jsonl"), output_prefix=prefix, progress=False))
    assert stats["dtype"] == "uint16"
    assert np.fromfile(prefix + ".bin", dtype=np.uint16).tolist()[-1] == 256


def test_fatal_error_with_workers_stops_pool_and_leaves_no_output(tmp_path):
    cfg = PrepareConfig(
        input=str(DATA / "malformed.jsonl"),
        output_prefix=str(tmp_path / "w"),
        on_error="fail",
        workers=2,
        chunk_size=1,
        progress=False,
    )
    with pytest.raises(MalformedRecordError, match="malformed.jsonl:2"):
        prepare(cfg)
    assert os.listdir(tmp_path) == []
