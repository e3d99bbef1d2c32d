"""``smartpt plan`` end to end over real ``.bin/.idx`` files, through the project's CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from megatron.core.datasets.utils import get_blend_from_list

from nemo_smartpt.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build_indexed(prefix: str, num_docs: int, doc_len: int) -> None:
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for n in range(num_docs):
        builder.add_document(torch.full((doc_len,), n, dtype=torch.int64), [doc_len])
    builder.finalize(prefix + ".idx")


SOURCES = [  # name, quality, category, docs, doc_len, max_epochs, extra
    ("crawl_high", "high", "crawl", 20, 50, 10, {}),
    ("crawl_medium", "medium", "crawl", 60, 50, 2, {}),
    ("crawl_low", "low", "crawl", 40, 50, 1, {}),
    ("math", "high", "math", 10, 40, 6, {}),
    ("reasoning", "high", "reasoning", 5, 60, 20, {"target_share": 0.2, "phases": ["phase2"]}),
]


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "data").mkdir()
    entries = []
    for name, quality, category, docs, length, cap, extra in SOURCES:
        build_indexed(str(tmp_path / "data" / name), docs, length)
        entries.append(
            {"name": name, "prefix": f"data/{name}", "quality": quality, "category": category, "max_epochs": cap}
            | extra
        )
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    return str(path)


def test_plan_end_to_end(tmp_path, catalog, capsys):
    out = tmp_path / "out"
    args = [f"catalog={catalog}", "budget_tokens=1e4", f"out={out}", "phase_boundaries=[0.6]", "seq_length=16"]
    assert main(["plan", *args]) == 0
    printed = capsys.readouterr().out
    assert "crawl_high" in printed and "phase2" in printed
    data = json.loads((out / "plan.json").read_text())
    assert set(data) == {
        "budget_tokens",
        "seed",
        "sources",
        "phases",
        "baselines",
        "split",
        "seq_length",
        "global_batch_size",
    }
    assert (data["split"], data["seq_length"], data["global_batch_size"]) == ("98,1,1", 16, 0)
    assert data["budget_tokens"] == 10_000 and [p["name"] for p in data["phases"]] == ["phase1", "phase2"]
    by_name = {s["name"]: s for s in data["sources"]}
    # the train part of split 98,1,1: round(0.98 * 60) = 59 of the 60 documents
    assert by_name["crawl_medium"]["tokens"] == 2950 and by_name["crawl_medium"]["documents"] == 59
    for s in data["sources"]:  # every cap respected
        assert s["planned_tokens"] <= s["max_epochs"] * s["tokens"]
        assert s["epochs"] <= s["max_epochs"] * (1 + 1e-9)
    assert data["phases"][1]["weights"]["reasoning"] == pytest.approx(0.2)
    assert data["phases"][1]["weights"]["crawl_low"] == 0.0
    for phase in data["phases"]:
        prefixes, weights = get_blend_from_list(phase["megatron_lm_data_path"].split())
        parsed = dict(zip(prefixes, weights))
        for s in data["sources"]:
            assert parsed.get(s["prefixes"][0], 0.0) == pytest.approx(phase["weights"][s["name"]], abs=1e-12)
        assert phase["bridge_override"].startswith("dataset.blend=[[")
    assert (out / "plan.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "plan.txt").read_text().startswith("blend plan:")


def test_sweep_writes_one_plan_per_count(tmp_path, catalog):
    out = tmp_path / "sweep"
    args = [f"catalog={catalog}", "budget_tokens=1e4", f"out={out}", "sweep.category=math", "sweep.epochs=[1,2,4]"]
    args.append("seq_length=16")
    assert main(["plan", *args, "quiet=true"]) == 0
    index = json.loads((out / "sweep.json").read_text())
    assert list(index["plans"]) == ["1", "2", "4"]
    for k, path in index["plans"].items():
        plan = json.loads(open(path).read())
        math = next(s for s in plan["sources"] if s["name"] == "math")
        assert math["epochs"] == pytest.approx(float(k))
        assert (out / f"math_x{k}" / "plan.png").exists()
    assert (out / "plan.json").exists()


def test_help_lists_fields_and_defaults(capsys):
    assert main(["plan", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in (
        "budget_tokens",
        "phase_boundaries: list[float] = [0.6]",
        "sweep.epochs",
        "crawl_tiers",
        "emphasis_multiplier",
    ):
        assert needle in text


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "catalog=PATH is required"),
        (["catalog={catalog}"], "budget_tokens=N is required"),
        (["catalog={catalog}", "budget_tokens=-5"], "budget_tokens must be a positive"),
        (["catalog={catalog}", "budget_tokens=1e9"], "infeasible"),
        (["catalog={catalog}", "budget_tokens=1e4", "colour=red"], "unknown key 'colour'"),
        (["catalog={catalog}", "budget_tokens=1e4", "phase_boundaries=[1.5]"], "strictly increasing"),
        (["catalog={tmp}/missing.yaml", "budget_tokens=1e4"], "catalog file not found"),
        (["catalog={catalog}", "budget_tokens=1e4", "sweep.category=poetry"], "no unpinned source"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, catalog, capsys, args, message):
    args = [a.format(catalog=catalog, tmp=tmp_path) for a in args]
    assert main(["plan", *args, f"out={tmp_path / 'o'}", "quiet=true", "seq_length=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_catalog_entries_are_one_line_errors(tmp_path, catalog, capsys):
    data = yaml.safe_load(open(catalog))
    data["sources"][1]["quality"] = "superb"
    open(catalog, "w").write(yaml.safe_dump(data))
    assert main(["plan", f"catalog={catalog}", "budget_tokens=1e4", f"out={tmp_path / 'o'}", "seq_length=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'crawl_medium'" in err and "'superb'" in err and len(err.splitlines()) == 1
    (tmp_path / "data" / "math.idx").write_bytes(b"garbage" * 20)
    data["sources"][1]["quality"] = "medium"
    open(catalog, "w").write(yaml.safe_dump(data))
    assert main(["plan", f"catalog={catalog}", "budget_tokens=1e4", f"out={tmp_path / 'o'}", "seq_length=16"]) == 2
    assert "math.idx" in capsys.readouterr().err
