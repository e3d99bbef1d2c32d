"""From NeMo Curator labels to a plan: ``prepare group_by`` -> ``smartpt catalog`` -> ``smartpt plan``.

The input is shaped like NeMo Curator's quality-classifier output (``text`` plus ``quality_pred`` High/Medium/Low,
with the classifier's probability column beside it); a second file carries Nemotron-CC style score buckets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from nemo_smartpt.blend.catalog import read_index_counts
from nemo_smartpt.blend.catalog_cli import nemotron_cc_tiers
from nemo_smartpt.cli import main


def curator_jsonl(path, n: int = 90) -> None:
    rng = np.random.default_rng(0)
    labels = ["High", "Medium", "Low"]
    with open(path, "w") as f:
        for i in range(n):
            label = labels[i % 3]
            words = " ".join(f"w{int(w)}" for w in rng.integers(0, 500, size=int(rng.integers(20, 60))))
            prob = [0.1, 0.1, 0.1]
            prob[labels.index(label)] = 0.8
            f.write(
                json.dumps(
                    {"id": i, "text": f"{label.lower()} doc {i}: {words}", "quality_pred": label, "quality_prob": prob}
                )
                + "\n"
            )


def test_curator_labels_to_catalog_to_plan(tmp_path, capsys):
    curator_jsonl(tmp_path / "curated.jsonl")
    prefix = tmp_path / "data" / "cc"
    assert (
        main(
            [
                "prepare",
                f"input={tmp_path / 'curated.jsonl'}",
                "format=text",
                "group_by=quality_pred",
                f"output_prefix={prefix}",
                "progress=false",
            ]
        )
        == 0
    )
    out = tmp_path / "catalog.yaml"
    assert main(["catalog", f"prepared=[{prefix}]", f"out={out}"]) == 0
    catalog = yaml.safe_load(out.read_text())
    by_tier = {s["quality"]: s for s in catalog["sources"]}
    assert set(by_tier) == {"high", "medium", "low"}
    assert by_tier["high"]["prefix"] == "data/cc_High" and by_tier["high"]["max_epochs"] == 4
    assert by_tier["low"]["max_epochs"] == 1 and all(s["category"] == "crawl" for s in catalog["sources"])
    text = out.read_text()
    for label in ("High", "Medium", "Low"):
        tokens, docs = read_index_counts(f"{prefix}_{label}")
        assert f"{label} -> {label.lower()}: {prefix}_{label} ({tokens} tokens, {docs} documents)" in text
    capsys.readouterr()
    plan_args = [f"catalog={out}", "budget_tokens=2e4", f"out={tmp_path / 'plan'}", "seq_length=32", "quiet=true"]
    assert main(["plan", *plan_args]) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    phase2 = plan["phases"][1]["weights"]
    assert phase2["cc_low"] == 0 and phase2["cc_medium"] == 0 and phase2["cc_high"] == 1.0  # quality phase
    # an existing catalog is never overwritten silently
    assert main(["catalog", f"prepared=[{prefix}]", f"out={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_nemotron_cc_buckets_map_to_five_tiers_and_overrides_win(tmp_path, capsys):
    rows = [{"text": f"bucket {b} doc {i} " + "x " * 30, "bucket": b} for b in (0, 5, 10, 15, 19) for i in range(4)]
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefix = tmp_path / "ncc"
    assert (
        main(
            [
                "prepare",
                f"input={tmp_path / 'n.jsonl'}",
                "format=text",
                "group_by=bucket",
                f"output_prefix={prefix}",
                "progress=false",
            ]
        )
        == 0
    )
    assert sorted(set(nemotron_cc_tiers().values())) == ["high", "low", "medium", "medium_high", "medium_low"]
    out = tmp_path / "c.yaml"
    assert main(["catalog", f"prepared=[{prefix}]", f"out={out}", "tiers.19=medium_high"]) == 0
    by_tier = {s["quality"]: s["prefix"] for s in yaml.safe_load(out.read_text())["sources"]}
    assert by_tier == {"medium_high": ["ncc_15", "ncc_19"], "medium": "ncc_10", "medium_low": "ncc_5", "low": "ncc_0"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepared=[{tmp}/nothing]"], "prepared={tmp}/nothing: cannot read"),
        (["prefixes=[{tmp}/d_Gold]"], "label 'Gold'"),
        (["prefixes=[{tmp}/d_High]", "tiers.high=superb"], "unknown tier(s) ['superb']"),
        (["prefixes=[{tmp}/d_High]", "out={tmp}"], "is a directory"),
        ([], "give prepared="),
    ],
)
def test_catalog_errors_are_one_line(tmp_path, capsys, args, message):
    from nemo_smartpt.testing.indexed_data import write_indexed_dataset

    for label in ("Gold", "High"):
        write_indexed_dataset(tmp_path / f"d_{label}", [[1, 2, 3]])
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={tmp_path / 'c.yaml'}")
    assert main(["catalog", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(tmp=tmp_path) in err and len(err.splitlines()) == 1, err
