"""Catalog loading over real ``.bin/.idx`` files written by megatron-core's ``IndexedDatasetBuilder``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from nemo_smartpt.blend.catalog import (
    DEFAULT_EMPHASIS_CATEGORIES,
    DEFAULT_TIERS,
    CatalogError,
    EmptySourceError,
    IndexFileError,
    InvalidCapError,
    UnknownTierError,
    catalog_from_dict,
    load_catalog,
    read_index_counts,
)


def build_indexed(prefix: str, doc_lengths: list[int]) -> str:
    """Write one Megatron indexed dataset whose documents have the given lengths."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for n, length in enumerate(doc_lengths):
        ids = torch.arange(length, dtype=torch.int64) + n
        builder.add_document(ids, [length])
    builder.finalize(prefix + ".idx")
    return prefix


def write_catalog(path, sources, **top) -> str:
    path.write_text(yaml.safe_dump({**top, "sources": sources}))
    return str(path)


def entry(name, prefix, quality="high", category="crawl", max_epochs=2, **extra):
    return {
        "name": name,
        "prefix": prefix,
        "quality": quality,
        "category": category,
        "max_epochs": max_epochs,
        **extra,
    }


def test_counts_come_from_idx(tmp_path):
    build_indexed(str(tmp_path / "a"), [5, 7, 9])
    assert read_index_counts(str(tmp_path / "a")) == (21, 3)


def test_load_catalog_resolves_relative_prefixes_and_sums_prefixes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    build_indexed(str(data / "crawl"), [10, 20])
    build_indexed(str(data / "r1"), [4])
    build_indexed(str(data / "r2"), [6, 6])
    cat_dir = tmp_path / "conf"
    cat_dir.mkdir()
    path = write_catalog(
        cat_dir / "cat.yaml",
        [
            entry("crawl", "../data/crawl"),
            entry(
                "reasoning",
                ["../data/r1", str(data / "r2")],
                category="reasoning",
                target_share=0.2,
                phases=["phase2"],
            ),
        ],
    )
    cat = load_catalog(path)
    crawl, reasoning = cat.sources
    assert crawl.prefixes == [str(data / "crawl")]
    assert (crawl.tokens, crawl.documents) == (30, 2)
    assert reasoning.prefixes == [str(data / "r1"), str(data / "r2")]
    assert (reasoning.tokens, reasoning.documents, reasoning.prefix_tokens) == (16, 3, [4, 12])
    assert reasoning.target_share == 0.2 and reasoning.phases == ["phase2"]
    assert crawl.cap_tokens == 60
    assert cat.tiers == DEFAULT_TIERS and cat.emphasis_categories == list(DEFAULT_EMPHASIS_CATEGORIES)


def test_custom_tiers_and_emphasis(tmp_path):
    build_indexed(str(tmp_path / "a"), [3])
    path = write_catalog(
        tmp_path / "c.yaml",
        [entry("a", "a", quality="gold")],
        tiers={"gold": 2.0, "silver": 1.0},
        emphasis_categories=["math"],
    )
    cat = load_catalog(path)
    assert cat.tiers == {"gold": 2.0, "silver": 1.0} and cat.emphasis_categories == ["math"]


def test_missing_idx_names_the_file(tmp_path):
    build_indexed(str(tmp_path / "a"), [3])
    (tmp_path / "a.idx").unlink()
    path = write_catalog(tmp_path / "c.yaml", [entry("a", "a")])
    with pytest.raises(IndexFileError, match=r"missing .*a\.idx"):
        load_catalog(path)


def test_missing_bin_names_the_file(tmp_path):
    build_indexed(str(tmp_path / "a"), [3])
    (tmp_path / "a.bin").unlink()
    with pytest.raises(IndexFileError, match=r"missing .*a\.bin"):
        read_index_counts(str(tmp_path / "a"))


@pytest.mark.parametrize("garbage", [b"", b"not an index at all" * 10, b"MMIDIDX\x00\x00" + b"\xff" * 40])
def test_corrupt_idx_names_the_file(tmp_path, garbage):
    build_indexed(str(tmp_path / "a"), [3, 4])
    (tmp_path / "a.idx").write_bytes(garbage)
    path = write_catalog(tmp_path / "c.yaml", [entry("a", "a")])
    with pytest.raises(IndexFileError, match=r"corrupt index .*a\.idx"):
        load_catalog(path)


def test_truncated_idx_is_corrupt(tmp_path):
    build_indexed(str(tmp_path / "a"), [3, 4, 5])
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "a.idx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError, match="corrupt index"):
        read_index_counts(str(tmp_path / "a"))


def test_unknown_tier_names_source_and_tiers(tmp_path):
    build_indexed(str(tmp_path / "a"), [3])
    path = write_catalog(tmp_path / "c.yaml", [entry("web", "a", quality="excellent")])
    with pytest.raises(UnknownTierError, match=r"'web'.*'excellent'.*medium_high"):
        load_catalog(path)


@pytest.mark.parametrize("cap", [0, -1, -0.5, ".nan", "two", True])
def test_bad_cap_names_source(tmp_path, cap):
    build_indexed(str(tmp_path / "a"), [3])
    path = write_catalog(tmp_path / "c.yaml", [entry("web", "a", max_epochs=cap)])
    if cap == ".nan":
        path_text = (tmp_path / "c.yaml").read_text().replace("'.nan'", ".nan")
        (tmp_path / "c.yaml").write_text(path_text)
    with pytest.raises(InvalidCapError, match="'web'.*max_epochs"):
        load_catalog(path)


@pytest.mark.parametrize("docs", [[], [0]])
def test_empty_source(tmp_path, docs):
    build_indexed(str(tmp_path / "a"), docs)
    path = write_catalog(tmp_path / "c.yaml", [entry("empty", "a")])
    with pytest.raises(EmptySourceError, match="'empty' .*no tokens"):
        load_catalog(path)


@pytest.mark.parametrize(
    "sources, match",
    [
        ([entry("a", "a"), entry("a", "a")], "appears twice"),
        ([{"name": "a", "prefix": "a"}], r"lacks \['category', 'max_epochs', 'quality'\]"),
        ([entry("a", "a", weight=3)], "unknown keys"),
        ([entry("a", "a", target_share=1.5)], "target_share"),
        ([entry("a", "a", phases=[])], "phases"),
        ([entry("a", 5)], "prefix must be"),
        ([], "no sources"),
    ],
)
def test_malformed_entries(tmp_path, sources, match):
    build_indexed(str(tmp_path / "a"), [3])
    with pytest.raises(CatalogError, match=match):
        load_catalog(write_catalog(tmp_path / "c.yaml", sources))


def test_bad_tier_weight_and_missing_file(tmp_path):
    build_indexed(str(tmp_path / "a"), [3])
    path = write_catalog(tmp_path / "c.yaml", [entry("a", "a")], tiers={"high": 0})
    with pytest.raises(CatalogError, match="tier 'high'.*> 0"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("sources: [\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(str(tmp_path / "bad.yaml"))


def test_example_catalog_fits_the_schema():
    # The example points at the bundled corpus the demo writes; fake the counts to check everything else.
    path = Path(__file__).resolve().parents[2] / "conf" / "catalog" / "example.yaml"
    data = yaml.safe_load(path.read_text())
    cat = catalog_from_dict(data, base_dir=str(path.parent), path=str(path), read_counts=lambda prefix: (1000, 10))
    assert {s.category for s in cat.sources} >= {"crawl", "math", "reasoning"}
    reasoning = cat.source("reasoning")
    assert reasoning.target_share == 0.2 and reasoning.phases == ["phase2"]
    root = path.parents[2]
    for source in cat.sources:
        assert [Path(p).resolve() for p in source.prefixes] == [root / "runs" / "bundled" / "indexed" / source.name]
