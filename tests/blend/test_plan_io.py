"""plan.json contract, round trip, table, chart and the Megatron-LM / Megatron-Bridge exports."""

from __future__ import annotations

import json

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from megatron.core.datasets.utils import get_blend_from_list
from omegaconf import OmegaConf

from nemo_smartpt.blend.catalog import Catalog, Source
from nemo_smartpt.blend.plan_io import (
    PlanFileError,
    bridge_override,
    format_table,
    load_plan,
    megatron_lm_data_path,
    plan_from_dict,
    save_plan,
    write_plan_outputs,
)
from nemo_smartpt.blend.planner import plan_blend
from nemo_smartpt.overrides import apply_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_plan(odd_prefix: str = "/data/reasoning_b"):
    sources = [
        Source("crawl_high", ["/data/crawl_high"], "high", "crawl", 4, 3000, 30, [3000]),
        Source("crawl_low", ["/data/crawl_low"], "low", "crawl", 1, 9000, 90, [9000]),
        Source("math", ["/data/math"], "high", "math", 6, 800, 8, [800]),
        Source(
            "reasoning",
            ["/data/reasoning_a", odd_prefix],
            "high",
            "reasoning",
            20,
            400,
            4,
            [100, 300],
            0.2,
            ["phase2"],
        ),
    ]
    return plan_blend(Catalog(sources), 10_000, [0.6], seed=7)


def test_plan_json_has_the_contract_shape(tmp_path):
    plan = make_plan()
    save_plan(plan, str(tmp_path / "plan.json"))
    data = json.loads((tmp_path / "plan.json").read_text())
    keys = {"budget_tokens", "seed", "sources", "phases", "baselines", "split", "seq_length", "global_batch_size"}
    assert set(data) == keys
    assert (data["budget_tokens"], data["seed"]) == (10_000, 7)
    required = {
        "name",
        "prefixes",
        "tokens",
        "documents",
        "quality",
        "category",
        "max_epochs",
        "planned_tokens",
        "epochs",
    }
    for s in data["sources"]:
        assert required <= set(s)
        assert isinstance(s["tokens"], int) and isinstance(s["planned_tokens"], int)
    keys = {"name", "start_token", "end_token", "weights", "megatron_lm_data_path", "bridge_override"}
    assert [set(p) for p in data["phases"]] == [keys, keys]
    assert [(p["start_token"], p["end_token"]) for p in data["phases"]] == [(0, 6000), (6000, 10_000)]
    for p in data["phases"]:
        assert sum(p["weights"].values()) == pytest.approx(1.0)
    assert set(data["baselines"]) == {"natural", "random_order"}
    reasoning = next(s for s in data["sources"] if s["name"] == "reasoning")
    assert reasoning["epochs"] == pytest.approx(0.2 * 4000 / 400)


def test_round_trip(tmp_path):
    plan = make_plan()
    save_plan(plan, str(tmp_path / "plan.json"))
    again = load_plan(str(tmp_path / "plan.json"))
    assert again == plan
    assert again.to_dict() == plan.to_dict()


def test_data_path_parses_back_to_the_weights():
    plan = make_plan()
    for phase in plan.phases:
        prefixes, weights = get_blend_from_list(megatron_lm_data_path(plan, phase).split())
        by_prefix = dict(zip(prefixes, weights))
        for src in plan.sources:
            got = sum(by_prefix.get(p, 0.0) for p in src.prefixes)
            assert got == pytest.approx(phase.weights[src.name], rel=1e-9, abs=1e-12)
        if phase.weights["reasoning"] > 0:  # two prefixes split by their tokens (100 : 300)
            assert by_prefix["/data/reasoning_b"] == pytest.approx(3 * by_prefix["/data/reasoning_a"])
        assert all(w > 0 for w in weights)  # zero-weight sources are left out


@pytest.mark.parametrize(
    "odd", ["/data/reasoning_b", "/data/my dir/it's,b=c[1]", "rel/path\\with\\backslash", "a\\'b\\"]
)
def test_bridge_override_parses_with_hydra(odd):
    plan = make_plan(odd)
    phase = plan.phases[1]
    text = bridge_override(plan, phase)
    (override,) = OverridesParser.create().parse_overrides([text])
    assert override.key_or_group == "dataset.blend"
    prefixes, weights = override.value()
    assert odd in prefixes
    expect = get_blend_from_list(megatron_lm_data_path(plan, phase).split()) if " " not in odd else None
    if expect:
        assert prefixes == expect[0] and weights == pytest.approx(expect[1], rel=1e-9)
    cfg = apply_overrides(OmegaConf.create({"dataset": {"blend": None}}), [text])
    assert OmegaConf.to_container(cfg.dataset.blend) == [prefixes, weights]


def test_table_and_chart(tmp_path):
    plan = make_plan()
    table = format_table(plan)
    for name in ("crawl_high", "crawl_low", "math", "reasoning", "phase1", "phase2", "natural", "pinned 20%"):
        assert name in table
    paths = write_plan_outputs(plan, str(tmp_path / "out"))
    assert open(paths["png"], "rb").read(8) == PNG_MAGIC
    assert open(paths["txt"]).read() == table


def test_load_plan_errors(tmp_path):
    with pytest.raises(PlanFileError, match="not found"):
        load_plan(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanFileError, match="not valid JSON"):
        load_plan(str(tmp_path / "bad.json"))
    data = make_plan().to_dict()
    del data["phases"][1]["weights"]
    with pytest.raises(PlanFileError, match=r"phases\[1\] lacks \['weights'\]"):
        plan_from_dict(data)
    data = make_plan().to_dict()
    del data["sources"][0]["prefix_tokens"]  # optional: written by us, maybe not by hand
    assert plan_from_dict(data).sources[0].prefix_tokens == [3000]
