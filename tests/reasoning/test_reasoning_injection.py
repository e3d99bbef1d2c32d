"""Issue 4's acceptance path: every public schema -> prepare -> a plan with reasoning at the requested share and
phase -> an SFT jsonl disjoint from pretraining -> a short Bridge ``pretrain()`` run over that blend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nemo_smartpt.reasoning.config import PrepareConfig
from nemo_smartpt.reasoning.prepare import prepare
from nemo_smartpt.reasoning.select import normalise_question
from nemo_smartpt.reasoning.split import SplitConfig

DATA = Path(__file__).parent / "data"
SCHEMAS = ["openthoughts_114k.jsonl", "openthoughts3.jsonl", "openthoughts_metadata.jsonl", "nemotron.jsonl"]


@pytest.mark.slow
def test_every_schema_is_injected_at_the_requested_share_and_trains(tmp_path):
    from nemo_smartpt.testing.indexed_data import progression_documents, write_indexed_dataset

    inputs = ",".join(str(DATA / name) for name in SCHEMAS)
    stats = prepare(
        PrepareConfig(
            input=inputs,
            output_prefix=str(tmp_path / "reasoning"),
            progress=False,
            split=SplitConfig(sft_fraction=0.4),
        )
    )
    assert stats["documents"] > 0 and (tmp_path / "reasoning.idx").exists()
    sft = [json.loads(line) for line in (tmp_path / "reasoning.sft.jsonl").read_text().splitlines()]
    assert sft, "the SFT side is empty: pick another sft_fraction"
    pretrain_questions = {normalise_question(q) for q in stats_questions(tmp_path / "reasoning")}
    sft_questions = {normalise_question(m["messages"][0]["content"]) for m in sft}
    assert pretrain_questions and not (pretrain_questions & sft_questions)

    # Byte-level web-like sources beside it (eod 256 = the byte tokenizer's EOD).
    for name, seed in (("crawl_high", 1), ("crawl_low", 2)):
        write_indexed_dataset(tmp_path / name, progression_documents(300, 256, eod=256, seed=seed, min_len=40))
    catalog = {
        "sources": [
            {"name": "crawl_high", "prefix": "crawl_high", "quality": "high", "category": "crawl", "max_epochs": 4},
            {"name": "crawl_low", "prefix": "crawl_low", "quality": "low", "category": "crawl", "max_epochs": 4},
            {
                "name": "reasoning",
                "prefix": "reasoning",
                "quality": "high",
                "category": "reasoning",
                "max_epochs": 64,
                "target_share": 0.5,
                "phases": ["phase1"],
            },
        ]
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nemo_smartpt",
            "train",
            f"data.catalog={tmp_path / 'catalog.yaml'}",
            f"out_dir={run}",
            "data.reasoning_share=0.2",
            "data.reasoning_phases=[phase2]",
            "train.train_iters=6",
            "model.seq_length=64",
            "train.global_batch_size=8",
            "train.micro_batch_size=8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((run / "plan" / "plan.json").read_text())
    phase1, phase2 = plan["phases"]
    assert phase1["weights"].get("reasoning", 0.0) == 0.0  # the override moved it out of phase 1
    assert phase2["weights"]["reasoning"] == pytest.approx(0.2, abs=1e-9)
    reasoning = next(s for s in plan["sources"] if s["name"] == "reasoning")
    # The plan says how many epochs the share takes (planned_tokens is rounded to whole tokens).
    assert reasoning["epochs"] == pytest.approx(
        reasoning["planned_tokens"] / reasoning["tokens"], abs=1 / reasoning["tokens"]
    )
    assert reasoning["planned_tokens"] == pytest.approx(0.2 * (phase2["end_token"] - phase2["start_token"]), abs=1)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["lm_loss"] == r["lm_loss"] for r in records)
    assert any("loss/source/reasoning" in r for r in records if r["phase"] == "phase2")


def stats_questions(prefix: Path) -> list[str]:
    """The questions that went to pretraining, read back from the rendered documents."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data = IndexedDataset(str(prefix))
    questions = []
    for i in range(len(data)):
        text = bytes(int(t) for t in data[i] if t < 256).decode("utf-8", errors="replace")
        questions.append(text.split("<think>")[0].strip())
    del data
    return questions
