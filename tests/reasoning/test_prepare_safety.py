"""``smartpt prepare`` never loses what a user owns: inputs, existing datasets, directories; empty output fails.

Every case runs the command's own entry point (``prepare_cli.main``, what ``smartpt prepare`` calls) and checks the
exit code, the one-line message naming the setting, and the files on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nemo_smartpt.reasoning import prepare_cli
from nemo_smartpt.reasoning.tokenizer import load_tokenizer

DATA = Path(__file__).parent / "data"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = prepare_cli.main([*args, "progress=false"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("smartpt prepare")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def read_docs(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_sft_output_equal_to_the_input_is_refused(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes((DATA / "openthoughts3.jsonl").read_bytes())
    before = src.read_bytes()
    code, _, err = run(
        capsys, f"input={src}", f"output_prefix={tmp_path / 'ds'}", "split.sft_fraction=0.5", f"split.sft_output={src}"
    )
    assert code == 1 and "split.sft_output" in one_line(err) and str(src) in err
    assert src.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_existing_dataset_is_refused_and_overwrite_leaves_no_stale_sidecar(tmp_path, capsys):
    prefix = str(tmp_path / "ds")
    code, _, _ = run(
        capsys, f"input={DATA / 'openthoughts3.jsonl'}", f"output_prefix={prefix}", "split.sft_fraction=0.5"
    )
    assert code == 0 and os.path.exists(prefix + ".sft.jsonl")
    before = {p: Path(tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    code, _, err = run(capsys, f"input={DATA / 'text.jsonl'}", "format=text", f"output_prefix={prefix}")
    assert code == 1 and "overwrite=true" in one_line(err) and "output_prefix" in err
    assert {p: Path(tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before
    code, _, _ = run(
        capsys, f"input={DATA / 'text.jsonl'}", "format=text", f"output_prefix={prefix}", "overwrite=true"
    )
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["ds.bin", "ds.idx", "ds.skipped.jsonl", "ds.stats.json"]  # no .sft.jsonl
    assert json.loads(Path(prefix + ".stats.json").read_text())["removed_stale_files"] == [prefix + ".sft.jsonl"]


def test_directory_like_prefix_is_refused(tmp_path, capsys):
    for prefix in (f"{tmp_path}/out/", str(tmp_path)):
        code, _, err = run(capsys, f"input={DATA / 'text.jsonl'}", f"output_prefix={prefix}")
        assert code == 1 and "is a directory" in one_line(err) and "output_prefix" in err
    assert os.listdir(tmp_path) == []


def test_zero_documents_is_an_error_with_the_reason_unless_allowed(tmp_path, capsys):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    junk = write_jsonl(tmp_path / "junk.jsonl", ["{not json", "[1, 2]"])
    cases = [
        ([f"input={empty}"], "holds no records"),
        ([f"input={junk}"], "invalid_json=1"),
        ([f"input={DATA / 'text.jsonl'}", "format=mapped", "+mapping.text=nothing_here"], "missing_field=2"),
    ]
    for args, reason in cases:
        code, _, err = run(capsys, *args, f"output_prefix={tmp_path / 'out' / 'ds'}")
        line = one_line(err)
        assert code == 1 and "no documents" in line and reason in line and "allow_empty=true" in line, line
        assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    code, out, _ = run(capsys, f"input={empty}", f"output_prefix={tmp_path / 'out' / 'ds'}", "allow_empty=true")
    assert code == 0
    from nemo_smartpt.blend.index_check import validate_index

    assert validate_index(str(tmp_path / "out" / "ds")).documents == 0  # a valid, empty dataset


def test_decontamination_of_everything_fails_and_of_most_warns_with_counts(tmp_path, capsys):
    records = [json.loads(line) for line in (DATA / "openthoughts3.jsonl").read_text().splitlines() if line.strip()]
    evals = tmp_path / "eval.jsonl"
    evals.write_text((DATA / "openthoughts3.jsonl").read_text())  # the training data itself as the "eval" set
    code, _, err = run(
        capsys,
        f"input={DATA / 'openthoughts3.jsonl'}",
        f"output_prefix={tmp_path / 'all'}",
        f"select.decontam_paths=[{evals}]",
        "select.decontam_ngram=3",
    )
    assert code == 1 and "contaminated=" in err and "no documents" in err
    # one clean record among the contaminated ones: written, with a warning that counts the drop
    clean = dict(records[0])
    clean_text = "a fresh question about tides " + " ".join(f"w{i}" for i in range(40))
    clean["conversations"] = [
        {"from": "human", "value": clean_text},
        {"from": "gpt", "value": "<think>" + clean_text + "</think> 42"},
    ]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*records, clean])
    code, _, err = run(
        capsys,
        f"input={mixed}",
        f"output_prefix={tmp_path / 'most'}",
        f"select.decontam_paths=[{evals}]",
        "select.decontam_ngram=3",
    )
    warning = [line for line in err.splitlines() if "warning: decontamination dropped" in line]
    assert code == 0 and len(warning) == 1, err
    assert f"dropped {len(records)} of {len(records) + 1} records" in warning[0]


def test_missing_decontamination_file_names_its_setting(tmp_path, capsys):
    code, _, err = run(
        capsys, f"input={DATA / 'text.jsonl'}", f"output_prefix={tmp_path / 'x'}", "select.decontam_paths=[nope.jsonl]"
    )
    line = one_line(err)
    assert code == 1 and "select.decontam_paths 'nope.jsonl' matches no file" in line and "input" not in line


def test_text_is_tokenized_exactly_as_written_and_empty_documents_are_counted(tmp_path, capsys):
    marked = "<|begin_of_thought|>\nlet me think\n<|end_of_thought|>\n<|begin_of_solution|>4<|end_of_solution|>"
    texts = [marked, "plain text, as written.\n", "   \n\t", "", "last one"]
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    prefix = str(tmp_path / "t")
    code, _, _ = run(capsys, f"input={src}", "format=text", f"output_prefix={prefix}")
    assert code == 0
    tok = load_tokenizer("byte")
    written = [t for t in texts if t.strip()]
    assert read_docs(prefix) == [ids + [tok.eod] for ids in tok.encode_batch(written)]
    stats = json.loads(Path(prefix + ".stats.json").read_text())
    assert stats["empty_documents"] == 2 and stats["skipped"] == {"empty_text": 2} and stats["documents"] == 3
    # marker rewriting only when asked
    code, _, _ = run(
        capsys, f"input={src}", "format=text", f"output_prefix={prefix}_n", "render.normalise_text_docs=true"
    )
    assert code == 0 and read_docs(prefix + "_n")[0] == tok.encode_batch(["<think>\nlet me think\n</think>\n4"])[0] + [
        tok.eod
    ]


def test_text_with_a_bpe_tokenizer_matches_the_tokenizer_byte_for_byte(tmp_path, capsys):
    from tokenizers import Tokenizer

    from tests.reasoning.test_reasoning_prepare import small_bpe

    spec = small_bpe(tmp_path)
    texts = ["<|begin_of_thought|>the answer<|end_of_thought|> is", "Ordinary text.\nWith two lines  and  spaces."]
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    code, _, _ = run(capsys, f"input={src}", "format=text", f"output_prefix={tmp_path / 'b'}", f"tokenizer={spec}")
    assert code == 0
    raw = Tokenizer.from_file(str(Path(spec) / "tokenizer.json"))
    eod = load_tokenizer(spec).eod
    assert read_docs(str(tmp_path / "b")) == [raw.encode(t, add_special_tokens=False).ids + [eod] for t in texts]


def test_group_by_writes_one_dataset_per_label(tmp_path, capsys):
    rows = [{"text": f"doc {i} " * (i + 1), "quality_pred": ["High", "Medium", "Low"][i % 3]} for i in range(9)]
    rows.append({"text": "no label"})
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, _ = run(
        capsys, f"input={src}", "format=text", "group_by=quality_pred", f"output_prefix={tmp_path / 'cc'}"
    )
    assert code == 0
    stats = json.loads((tmp_path / "cc.stats.json").read_text())
    assert sorted(stats["groups"]) == ["High", "Low", "Medium"] and stats["skipped"] == {"missing_group": 1}
    tok = load_tokenizer("byte")
    for label, entry in stats["groups"].items():
        want = [r["text"] for r in rows if r.get("quality_pred") == label]
        assert entry["prefix"] == f"{tmp_path / 'cc'}_{label}" and entry["documents"] == 3
        assert read_docs(entry["prefix"]) == [ids + [tok.eod] for ids in tok.encode_batch(want)]
    assert not list(tmp_path.glob("*.partial-*")) and not (tmp_path / "cc.bin").exists()
    # a second run onto the same groups is refused without overwrite, and nothing of the first is lost
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    code, _, err = run(
        capsys, f"input={src}", "format=text", "group_by=quality_pred", f"output_prefix={tmp_path / 'cc'}"
    )
    assert code == 1 and "overwrite=true" in one_line(err)
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before
