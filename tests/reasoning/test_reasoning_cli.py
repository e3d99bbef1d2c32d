"""``smartpt prepare`` through the real entry point: one command gives the indexed dataset, the SFT jsonl and stats."""

from __future__ import annotations

import json
from pathlib import Path

from nemo_smartpt.cli import main

DATA = Path(__file__).parent / "data"


def test_prepare_end_to_end(tmp_path, capsys):
    prefix = tmp_path / "out" / "ot"
    rc = main(
        [
            "prepare",
            f"input={DATA}/openthoughts*.jsonl,{DATA}/nemotron.jsonl",
            f"output_prefix={prefix}",
            "selection=ldq",
            "split.sft_fraction=0.25",
            "select.max_examples=8",
            "progress=false",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "documents" in out.out
    stats = json.loads(Path(f"{prefix}.stats.json").read_text())
    assert stats["documents"] + stats["sft"]["examples"] <= 8 and stats["skipped"].get("no_answer") == 2
    sft = [json.loads(line) for line in Path(f"{prefix}.sft.jsonl").read_text().splitlines()]
    assert len(sft) == stats["sft"]["examples"] >= 1
    assert all(row["messages"][0]["role"] == "user" for row in sft)
    assert Path(f"{prefix}.bin").stat().st_size > 0 and Path(f"{prefix}.idx").exists()


def test_help_lists_fields(capsys):
    assert main(["prepare", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        "output_prefix: str = ''" in out
        and "split.sft_fraction: float = 0.0" in out
        and "select.max_tokens: int = 0" in out
    )


def test_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["prepare", "nosuchkey=1"], 2, "unknown key 'nosuchkey'"),
        (["prepare", "workers=abc"], 2, "workers"),
        (["prepare", f"output_prefix={tmp_path}/x"], 1, "input is required"),
        (["prepare", f"input={tmp_path}/none.jsonl", f"output_prefix={tmp_path}/x"], 1, "matches no file"),
        (["prepare", f"input={DATA}/text.jsonl", f"output_prefix={tmp_path}/x", "format=xml"], 1, "format must be"),
        (["prepare", f"input={DATA}/text.jsonl", f"output_prefix={tmp_path}/x", "tokenizer=/no/tok"], 1, "no such"),
        (
            ["prepare", f"input={DATA}/malformed.jsonl", f"output_prefix={tmp_path}/x", "on_error=fail", "progress=0"],
            1,
            "malformed.jsonl:2: invalid JSON",
        ),
    ]
    for argv, code, needle in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not list(tmp_path.iterdir())


def test_mapped_layout_from_the_command_line(tmp_path, capsys):
    argv = [
        "prepare",
        f"input={DATA}/mapped.jsonl",
        f"output_prefix={tmp_path}/m",
        "format=mapped",
        "+mapping.question=prompt",
        "+mapping.thought=output.reasoning",
        "+mapping.answer=output.final",
        "+mapping.domain=topic",
        "progress=false",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    stats = json.loads(Path(f"{tmp_path}/m.stats.json").read_text())
    # "geography" is no known label and the question has no keyword: general; "math" is taken as given.
    assert stats["domains"] == {"general": {"documents": 1, "tokens": 57}, "math": {"documents": 1, "tokens": 53}}
