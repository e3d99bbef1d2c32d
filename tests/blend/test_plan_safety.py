"""``smartpt plan`` catches what would fail (or silently mislead) later: corrupt indexes, shared prefixes, settings.

Each case runs the CLI entry point and expects exit code 2 with one line that names the file or the setting.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from nemo_smartpt.blend.index_check import HEADER, IndexValidationError, validate_index
from nemo_smartpt.cli import main
from nemo_smartpt.testing.indexed_data import write_indexed_dataset


@pytest.fixture
def catalog(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for name, quality, cap, docs in (
        ("crawl_high", "high", 4, 60),
        ("crawl_low", "low", 1, 200),
        ("math", "high", 3, 40),
    ):
        write_indexed_dataset(
            tmp_path / name, [list(range(int(rng.integers(20, 60)))) for _ in range(docs)], dtype=np.uint16
        )
        category = "math" if name == "math" else "crawl"
        entries.append({"name": name, "prefix": name, "quality": quality, "category": category, "max_epochs": cap})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    return path


def one_line_error(capsys, *args: str) -> str:
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def flip(path: str, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.int64(value).tobytes())


@pytest.mark.parametrize(
    "damage, message",
    [
        ("pointer", "sequence pointer 7 is"),  # one flipped byte in a sequence pointer: caught at plan time
        ("length", "describes"),  # a length that no longer adds up to the .bin
        ("docindex", "document index"),
        ("bin", "has 10 bytes"),
    ],
)
def test_corrupt_index_is_caught_at_plan_time(tmp_path, catalog, capsys, damage, message):
    idx = str(tmp_path / "math.idx")
    n = HEADER.unpack(open(idx, "rb").read(HEADER.size))[3]
    if damage == "pointer":
        with open(idx, "r+b") as f:
            f.seek(HEADER.size + 4 * n + 8 * 7 + 2)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x10]))
    elif damage == "length":
        with open(idx, "r+b") as f:
            f.seek(HEADER.size + 4 * (n - 1))
            f.write(np.int32(10_000).tobytes())
    elif damage == "docindex":
        flip(idx, HEADER.size + 12 * n + 8 * 3, -5)
    else:
        with open(tmp_path / "math.bin", "r+b") as f:
            f.truncate(10)
    err = one_line_error(capsys, f"catalog={catalog}", "budget_tokens=5000", f"out={tmp_path / 'o'}", "seq_length=32")
    assert message in err and "math." in err


def test_validation_reads_the_same_counts_as_megatron(tmp_path, catalog):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    summary = validate_index(str(tmp_path / "crawl_low"))
    ds = IndexedDataset(str(tmp_path / "crawl_low"))
    assert np.array_equal(summary.sequence_lengths, ds.sequence_lengths)
    assert summary.documents == len(ds.document_indices) - 1
    with pytest.raises(IndexValidationError, match="missing"):
        validate_index(str(tmp_path / "nothing"))


def test_two_sources_sharing_a_prefix_are_refused(tmp_path, catalog, capsys):
    data = yaml.safe_load(catalog.read_text())
    data["sources"].append(
        {"name": "math_again", "prefix": "./math", "quality": "high", "category": "math", "max_epochs": 3}
    )
    catalog.write_text(yaml.safe_dump(data))
    err = one_line_error(capsys, f"catalog={catalog}", "budget_tokens=5000", f"out={tmp_path / 'o'}")
    assert "'math'" in err and "'math_again'" in err and "both read prefix" in err


def test_documented_phase_overrides_work_as_shown(tmp_path, catalog, capsys):
    import json

    args = [f"catalog={catalog}", "budget_tokens=5000", "seq_length=32", "quiet=true"]
    assert main(["plan", *args, f"out={tmp_path / 'a'}", "phases.1.crawl_tiers=[high]"]) == 0
    assert main(["plan", *args, f"out={tmp_path / 'b'}", "phases.1.emphasis_multiplier=3"]) == 0
    a = json.loads((tmp_path / "a" / "plan.json").read_text())["phases"][1]["weights"]
    b = json.loads((tmp_path / "b" / "plan.json").read_text())["phases"][1]["weights"]
    assert a["crawl_low"] == 0 and b["math"] > a["math"]
    capsys.readouterr()
    assert main(["plan", "--help"]) == 0
    assert "phases.<i>.crawl_tiers" in capsys.readouterr().out  # the form --help shows is the form that works


@pytest.mark.parametrize(
    "edit, args, message",
    [
        ("target_share", [], "target_share must be in (0, 1), got 'half'"),
        (None, ["out={catalog}"], "is a file; out must be a directory"),
        (None, ["out={catalog}/sub"], "cannot write the plan there"),
        (None, ["budget_tokens=10", "seq_length=8"], "fewer than one sample of seq_length 8"),
        (None, ["seq_length=0"], "seq_length must be >= 1"),
        (None, ["phases.5.crawl_tiers=[high]"], "unknown key 'phases.5.crawl_tiers'"),
        (None, ["split=abc"], "split='abc'"),
    ],
)
def test_setting_errors_are_one_line_and_name_the_setting(tmp_path, catalog, capsys, edit, args, message):
    if edit:
        data = yaml.safe_load(catalog.read_text())
        data["sources"][2]["target_share"] = "half"
        catalog.write_text(yaml.safe_dump(data))
    args = [a.format(catalog=catalog) for a in args]
    base = {"budget_tokens": "5000", "out": str(tmp_path / "o"), "seq_length": "32"}
    for a in args:
        base.pop(a.split("=")[0], None)
    err = one_line_error(capsys, f"catalog={catalog}", *[f"{k}={v}" for k, v in base.items()], *args)
    assert message in err, err


def test_bench_missing_dir_is_one_line(tmp_path):
    bench = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_phased_dataset.py")
    done = subprocess.run(
        [sys.executable, bench, "--dir", str(tmp_path / "missing"), "--samples", "10"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    # (megatron-core's import warnings may precede it; the error itself is one line, no traceback)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert (
        done.returncode != 0
        and "Traceback" not in done.stderr
        and errors
        == [
            f"bench_phased_dataset.py: error: --dir {tmp_path / 'missing'}: no such directory (create it or omit --dir)"
        ]
    )
