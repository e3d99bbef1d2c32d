"""Golden-file tests of the record readers: every public layout, and the edge cases of real dumps."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from nemo_smartpt.reasoning.render import RenderConfig, render_messages, render_text, split_response
from nemo_smartpt.reasoning.schemas import (
    MalformedRecordError,
    ReasoningDataError,
    ReasoningExample,
    TextDoc,
    decode_payload,
    detect_format,
    expand_inputs,
    iter_raw,
    parse_record,
)

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden.json").read_text(encoding="utf-8"))


def _parse_file(name: str, fmt: str, mapping=None):
    out = []
    for line, payload in iter_raw(str(DATA / name)):
        obj, _ = decode_payload(payload, "strict")
        out.append((line, parse_record(obj, fmt, mapping)))
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_records(name):
    case = GOLDEN[name]
    parsed = _parse_file(name, case["format"], case.get("mapping"))
    assert len(parsed) == len(case["records"])
    for (line, record), want in zip(parsed, case["records"]):
        got = {k: v for k, v in asdict(record).items() if k != "meta"}
        got["rendered"] = render_text(record, RenderConfig()) if isinstance(record, ReasoningExample) else record.text
        assert {"line": line, **got} == want, f"{name}:{line}"


@pytest.mark.parametrize("name", ["openthoughts_114k.jsonl", "openthoughts3.jsonl", "nemotron.jsonl", "text.jsonl"])
def test_auto_detects_the_layout(name):
    fmt = GOLDEN[name]["format"]
    assert [asdict(r) for _, r in _parse_file(name, "auto")] == [asdict(r) for _, r in _parse_file(name, fmt)]


def test_metadata_fields_are_kept():
    (_, first), *_ = _parse_file("openthoughts3.jsonl", "openthoughts")
    assert first.meta["difficulty"] == 3 and first.meta["source"] == "synthetic"
    _, nemo = _parse_file("nemotron.jsonl", "nemotron")[0]
    assert nemo.meta["reasoning"] == "on" and nemo.meta["license"] == "cc-by-4.0" and nemo.domain == "code"


@pytest.mark.parametrize(
    ("response", "thought", "answer"),
    [
        ("<think>a</think>b", "a", "b"),
        ("<|begin_of_thought|> a <|end_of_thought|> <|begin_of_solution|> b <|end_of_solution|>", "a", "b"),
        ("<think>a <think>inner</think> c</think> b", "a <think>inner</think> c", "b"),
        ("prompt-opened a</think> b", "prompt-opened a", "b"),
        ("<think>truncated", "truncated", ""),
        ("just an answer", "", "just an answer"),
        ("<|begin_of_solution|>only<|end_of_solution|>", "", "only"),
        ("<think></think>", "", ""),
    ],
)
def test_split_response_markers(response, thought, answer):
    assert split_response(response) == (thought, answer)


def test_render_template_is_one_pass_and_configurable():
    ex = ReasoningExample("Q {answer}", "", "A")
    assert render_text(ex, RenderConfig()) == "Q {answer}\n\n<think>\n\n</think>\n\nA"
    assert render_text(ex, RenderConfig(empty_thought="omit")) == "Q {answer}\n\nA"
    cfg = RenderConfig(template="Problem: {question}\nThinking: {thought}\nAnswer: {answer}")
    assert render_text(ReasoningExample("q", "t", "a"), cfg) == "Problem: q\nThinking: t\nAnswer: a"
    msgs = render_messages(ReasoningExample("q", "t", "a", system="sys"), RenderConfig(include_system=True))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[2]["content"] == "<think>\nt\n</think>\n\na"


def test_non_utf8_bytes_replace_or_fail():
    (line1, bad), (_, good) = list(iter_raw(str(DATA / "non_utf8.jsonl")))
    obj, repaired = decode_payload(bad, "replace")
    assert repaired and obj["text"] == "caf\ufffd latin-1 byte"
    assert decode_payload(good, "strict") == ({"text": "valid é"}, False)
    with pytest.raises(MalformedRecordError) as err:
        decode_payload(bad, "strict")
    assert err.value.reason == "invalid_utf8" and "byte 13" in str(err.value)


def test_very_long_record(tmp_path):
    thought = "step " * 200_000
    path = tmp_path / "long.jsonl"
    rec = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": f"<think>{thought}</think>ok"}]}
    path.write_text(json.dumps(rec) + "\n")
    ((line, payload),) = list(iter_raw(str(path)))
    record = parse_record(decode_payload(payload, "strict")[0], "openthoughts")
    assert line == 1 and record.thought == thought.strip() and record.answer == "ok"


@pytest.mark.parametrize(
    ("payload", "fmt", "reason"),
    [
        (b'{"text": "broken', "auto", "invalid_json"),
        (b"[1, 2]", "auto", "not_an_object"),
        (b'{"text": 42}', "text", "bad_type"),
        (b'{"other": 1}', "auto", "unknown_layout"),
        (b'{"conversations": [{"from": "gpt", "value": "x"}]}', "openthoughts", "missing_field"),
        (b'{"conversations": "nope"}', "openthoughts", "bad_type"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "nemotron", "bad_type"),
    ],
)
def test_malformed_records_have_reason_codes(payload, fmt, reason):
    with pytest.raises(MalformedRecordError) as err:
        parse_record(decode_payload(payload, "strict")[0], fmt)
    assert err.value.reason == reason


def test_mapped_response_field_and_missing_question():
    obj = {"in": {"q": "Q?"}, "out": "<think>t</think>a", "cat": "math"}
    rec = parse_record(obj, "mapped", {"question": "in.q", "response": "out", "domain": "cat"})
    assert (rec.question, rec.thought, rec.answer, rec.domain) == ("Q?", "t", "a", "math")
    with pytest.raises(MalformedRecordError, match="question"):
        parse_record({"in": {}}, "mapped", {"question": "in.q"})
    text = parse_record({"body": ["x", "doc"]}, "mapped", {"text": "body.1"})
    assert isinstance(text, TextDoc) and text.text == "doc"


def test_parquet_rows_read_lazily(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "nemotron.jsonl").read_text().splitlines()]
    rows = [{"messages": r["messages"], "category": r["category"]} for r in rows]
    path = tmp_path / "n.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    parsed = [(line, parse_record(decode_payload(p, "strict")[0], "auto")) for line, p in iter_raw(str(path), 2)]
    assert [line for line, _ in parsed] == [1, 2, 3]
    assert parsed[0][1].thought == "Use sorted()." and parsed[1][1].domain == "chat"


def test_expand_inputs_sorted_and_errors(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text("{}\n")
    assert expand_inputs(f"{tmp_path}/*.jsonl") == [f"{tmp_path}/a.jsonl", f"{tmp_path}/b.jsonl"]
    with pytest.raises(ReasoningDataError, match="matches no file"):
        expand_inputs(f"{tmp_path}/*.parquet")
    assert detect_format({"problem": "p"}) == "openthoughts"
