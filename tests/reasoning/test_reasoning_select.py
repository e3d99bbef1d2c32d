"""Selection: domain labels, quality score and filters, decontamination, de-duplication, the SHQ/LDQ/LMQ presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_smartpt.reasoning.config import PrepareConfig, config_from_overrides
from nemo_smartpt.reasoning.prepare import prepare
from nemo_smartpt.reasoning.schemas import ReasoningExample, TextDoc
from nemo_smartpt.reasoning.select import (
    DecontamIndex,
    SelectConfig,
    SelectConfigError,
    check_select_config,
    filter_reason,
    label_domain,
    load_preset,
    normalise_question,
    preset_names,
    presets_dir,
    quality_score,
    stable_hash,
)

DATA = Path(__file__).parent / "data"


def test_domains_from_fields_aliases_and_keywords():
    cfg = SelectConfig()
    assert label_domain(ReasoningExample("q", "", "", domain="Biology"), cfg) == "science"
    assert label_domain(ReasoningExample("q", "", "", domain="chat"), cfg) == "general"
    assert label_domain(ReasoningExample("Solve the equation $x^2=4$", "", "", domain="odd-label"), cfg) == "math"
    assert label_domain(ReasoningExample("Write a python function", "", ""), cfg) == "code"
    assert label_domain(TextDoc("The molecule reacts with energy."), cfg) == "science"
    assert label_domain(ReasoningExample("Tell me a story.", "", ""), cfg) == "general"
    custom = SelectConfig(domain_keywords={"code": ["story"]})
    assert label_domain(ReasoningExample("Tell me a story.", "", ""), custom) == "code"


def test_quality_score_and_filters():
    cfg = SelectConfig(target_thought_chars=100, score_field="rating", score_field_max=10.0)
    full = ReasoningExample("q", "t" * 100, "a", meta={"rating": 10})
    assert quality_score(full, cfg) == pytest.approx(1.0)
    assert quality_score(ReasoningExample("q", "t" * 50, ""), cfg) == pytest.approx(0.25)
    strict = SelectConfig(require_answer=True, min_thought_chars=10, max_thought_chars=20, min_difficulty=2)
    assert filter_reason(ReasoningExample("q", "t" * 15, ""), "math", strict) == "no_answer"
    assert filter_reason(ReasoningExample("q", "t" * 5, "a"), "math", strict) == "thought_too_short"
    assert filter_reason(ReasoningExample("q", "t" * 25, "a"), "math", strict) == "thought_too_long"
    assert filter_reason(ReasoningExample("q", "t" * 15, "a", meta={"difficulty": 1}), "math", strict) == "too_easy"
    assert filter_reason(ReasoningExample("q", "t" * 15, "a", meta={"difficulty": "7"}), "math", strict) is None
    assert filter_reason(ReasoningExample("q", "t" * 15, "a"), "code", SelectConfig(domains=["math"])) == (
        "domain_not_selected"
    )
    assert filter_reason(ReasoningExample("q", "", "a"), "math", SelectConfig(min_score=0.9)) == "low_score"


def test_config_errors_name_the_field():
    with pytest.raises(SelectConfigError, match="select.domains"):
        check_select_config(SelectConfig(domains=["poetry"]))
    with pytest.raises(SelectConfigError, match="select.min_score"):
        check_select_config(SelectConfig(min_score=2.0))


def test_normalised_question_and_stable_hash():
    assert normalise_question("  What  IS\n2+2? ") == normalise_question("what is 2+2?") == "what is 2+2?"
    assert stable_hash("a") == stable_hash("a") != stable_hash("a", salt="s")
    assert 0 <= stable_hash("a") < 2**64


def test_decontam_index_13_grams():
    index = DecontamIndex.from_config(SelectConfig(decontam_paths=[str(DATA / "eval_set.jsonl")]))
    assert index.documents == 1
    assert index.contaminated("so NATALIA sold clips to 48 of her friends in April and then she sold half!")
    assert not index.contaminated("Natalia sold clips to 48 of her friends in April and then")
    assert DecontamIndex.from_config(SelectConfig()) is None


@pytest.mark.parametrize("name", ["shq", "ldq", "lmq", "none"])
def test_every_preset_loads_into_the_schema(name):
    assert name in preset_names()
    raw = OmegaConf.load(Path(presets_dir()) / f"{name}.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SelectConfig), raw))
    check_select_config(cfg)
    assert load_preset(name) == OmegaConf.to_container(raw)


def test_selection_override_order():
    cfg = config_from_overrides(["input=x", "output_prefix=y", "selection=shq", "select.min_score=0.5"])
    assert cfg.select.require_answer and cfg.select.dedup and cfg.select.min_score == 0.5
    with pytest.raises(SelectConfigError, match="unknown selection"):
        config_from_overrides(["selection=xyz"])


def test_lmq_union_is_deduplicated(tmp_path):
    def conv(q):
        return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "<think>t</think>a"}]}

    (tmp_path / "shq.jsonl").write_text("".join(json.dumps(conv(q)) + "\n" for q in ["Q one", "Q two"]))
    (tmp_path / "ldq.jsonl").write_text("".join(json.dumps(conv(q)) + "\n" for q in ["q  ONE", "Q three"]))
    cfg = config_from_overrides(
        [f"input={tmp_path}/shq.jsonl,{tmp_path}/ldq.jsonl", f"output_prefix={tmp_path}/lmq", "selection=lmq"]
    )
    cfg.progress = False
    stats = prepare(cfg)
    assert stats["documents"] == 3 and stats["dedup_dropped"] == 1
    assert stats["skipped_examples"][0] == {
        "file": f"{tmp_path}/ldq.jsonl",
        "line": 1,
        "reason": "duplicate_question",
    }


def test_budget_stops_reading_early(tmp_path):
    rows = "".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(500))
    (tmp_path / "t.jsonl").write_text(rows)
    cfg = PrepareConfig(input=str(tmp_path / "t.jsonl"), output_prefix=str(tmp_path / "o"), chunk_size=10)
    cfg.select.max_examples, cfg.progress = 25, False
    stats = prepare(cfg)
    assert stats["documents"] == 25 and stats["records_read"] == 30
    assert stats["stopped_early_at"].endswith("t.jsonl:30")


def test_dedup_keeps_first_copy_that_fits_the_budget(tmp_path):
    def conv(q, thought):
        return {
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": f"<think>{thought}</think>a"}]
        }

    rows = [conv("Same Q", "long " * 40), conv("same  q", "short"), conv("SAME Q", "short")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PrepareConfig(input=str(tmp_path / "d.jsonl"), output_prefix=str(tmp_path / "o"), progress=False)
    cfg.select.dedup, cfg.select.max_tokens = True, 60
    stats = prepare(cfg)
    assert stats["documents"] == 1 and stats["skipped"] == {"budget_full": 1, "duplicate_question": 1}
    assert [e["line"] for e in stats["skipped_examples"]] == [1, 3]
