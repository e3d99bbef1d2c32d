"""The world: deterministic, decontaminated per instance, tokenized with its own BPE, prepared like real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nemo_smartpt.world.build import ensure_world, write_raw
from nemo_smartpt.world.heldout import contaminated_instances, contaminated_phrasings, phrasing_skeletons
from nemo_smartpt.world.problems import answer_of, instance_of, question_of
from nemo_smartpt.world.spec import ATTRIBUTES, WorldSpec, make_world, tiny_spec

SMALL = tiny_spec()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    ensure_world(out, SMALL)
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _training_texts(world_dir: Path) -> list[str]:
    texts = []
    for path in sorted((world_dir / "raw").glob("*.jsonl")):
        for record in _jsonl(path):
            texts.append(record["text"] if "text" in record else json.dumps(record["conversations"]))
    return texts


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    a, b, c = (
        write_raw(tmp_path / name, spec)
        for name, spec in [("a", SMALL), ("b", SMALL), ("c", WorldSpec(**{**SMALL.__dict__, "seed": 1}))]
    )
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert a["crawl_high"].read_bytes() != c["crawl_high"].read_bytes()
    assert (tmp_path / "a" / "eval" / "reasoning_test.jsonl").read_bytes() == (
        tmp_path / "b" / "eval" / "reasoning_test.jsonl"
    ).read_bytes()


def test_heldout_phrasings_never_occur_in_training_and_the_check_can_fire(small_world):
    texts = _training_texts(small_world)
    assert contaminated_phrasings(texts) == []
    question = _jsonl(small_world / "eval" / "knowledge_test.jsonl")[0]["prompt"]
    hits = contaminated_phrasings([*texts, f"some page {question} Belesa"])
    assert [i for i, _ in hits] == [len(texts)]
    # Every held-out prompt is built from a checked skeleton.
    for split in ("test", "dev"):
        for item in _jsonl(small_world / "eval" / f"knowledge_{split}.jsonl"):
            assert any(piece in item["prompt"] for piece in phrasing_skeletons(split))


def test_heldout_reasoning_instances_never_occur_in_training_and_the_check_can_fire(small_world):
    questions = [r["conversations"][0]["value"] for r in _jsonl(small_world / "raw" / "reasoning.jsonl")]
    test = [r["question"] for r in _jsonl(small_world / "eval" / "reasoning_test.jsonl")]
    dev = [r["question"] for r in _jsonl(small_world / "eval" / "reasoning_dev.jsonl")]
    assert all(instance_of(q) is not None for q in questions + test + dev)
    assert contaminated_instances(questions, test + dev) == []
    assert contaminated_instances(dev, test) == []
    # The same numbers dressed with another person and item are the same instance: the check must catch it.
    numbers = instance_of(test[0])
    disguised = question_of(numbers, "Someoneelse", "pebbles")
    assert disguised != test[0] and instance_of(disguised) == numbers
    assert contaminated_instances([*questions, disguised], test) == [(len(questions), numbers)]


def test_heldout_answers_are_right(small_world):
    world = make_world(SMALL)
    people = {p.name: p for p in world.people}
    items = _jsonl(small_world / "eval" / "knowledge_test.jsonl")
    assert len(items) == len(world.people) * len(ATTRIBUTES)
    for item in items:
        assert item["choices"] == world.candidates(item["attribute"])  # all values of the attribute
        assert item["choices"][item["answer"]] == people[item["entity"]].value(item["attribute"])
    for item in _jsonl(small_world / "eval" / "reasoning_test.jsonl"):
        assert str(answer_of(instance_of(item["question"]))) == item["answer"]
        assert item["prompt"].endswith("\n\n<think>\n")


def test_catalog_tokenizer_and_prepared_sources(small_world):
    from nemo_smartpt.reasoning.tokenizer import load_tokenizer

    catalog = yaml.safe_load((small_world / "catalog.yaml").read_text())["sources"]
    tiers = {s["name"]: s["quality"] for s in catalog}
    assert {tiers[f"crawl_{t}"] for t in ("high", "medium_high", "medium", "medium_low", "low")} == {
        "high", "medium_high", "medium", "medium_low", "low"
    }  # fmt: skip
    for source in catalog:
        stats = json.loads((small_world / f"{source['prefix']}.stats.json").read_text())
        assert stats["documents"] > 0 and stats["tokens"] > 0, source["name"]
    reasoning = json.loads((small_world / "indexed" / "reasoning.stats.json").read_text())
    assert reasoning["sft"]["examples"] > 0  # the data-matched SFT split went through prepare
    tok = load_tokenizer(str(small_world / "tokenizer"))
    assert tok.vocab_size <= SMALL.tokenizer_vocab
    text = "Question: In which city was Zobelra born?\nAnswer: Belesa <think>\n1 + 2 = 3.\n</think>"
    assert tok.decode(tok.encode_batch([text])[0]) == text  # byte-level: unseen words encode too
    assert len(tok.encode_batch(["<think>"])[0]) == 1
    tasks = {p.stem for p in (small_world / "tasks").glob("*.yaml")}
    assert {"world_knowledge", "world_reasoning", "world_knowledge_dev", "world_reasoning_dev"} <= tasks


@pytest.mark.slow
def test_default_world_names_and_numbers_are_short_and_crawl_is_mostly_low_quality(tmp_path):
    """At the default size: every name and value is one or two tokens, and low-quality crawl dominates by tokens."""
    from nemo_smartpt.reasoning.tokenizer import load_tokenizer
    from nemo_smartpt.world.build import tokenizer_texts
    from nemo_smartpt.world.tokenizer import train_tokenizer

    spec = WorldSpec()
    paths = write_raw(tmp_path, spec)
    tok = load_tokenizer(str(train_tokenizer(tokenizer_texts(paths, spec), tmp_path / "tok", spec.tokenizer_vocab)))
    world = make_world(spec)
    values = {p.name for p in world.people} | {v for a in ATTRIBUTES for v in world.candidates(a)}
    values |= {str(n) for n in range(41)}
    lengths = {v: len(tok.encode_batch([f" {v}"])[0]) for v in values}
    assert max(lengths.values()) <= 2, {v: n for v, n in lengths.items() if n > 2}
    tokens = {}
    for name, path in paths.items():
        if name != "reasoning":
            texts = [r["text"] for r in _jsonl(path)]
            tokens[name] = sum(len(ids) for ids in tok.encode_batch(texts))
    low = tokens["crawl_low"] + tokens["crawl_medium_low"]
    assert low / sum(tokens.values()) > 0.5, tokens
    assert tokens["crawl_low"] == max(tokens.values())


def test_task_files_load_in_lm_eval_over_the_local_jsonl(small_world):
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(small_world / "tasks"), include_defaults=False)
    names = ["world_knowledge", "world_reasoning", "world_knowledge_dev", "world_reasoning_dev"]
    tasks = manager.load_task_or_group(names)
    by_name = {getattr(t, "task_name", str(k)): t for k, t in tasks.items()}
    knowledge = by_name["world_knowledge"]
    docs = list(knowledge.test_docs())
    assert len(docs) == len(make_world(SMALL).people) * len(ATTRIBUTES)
    doc = docs[0]
    assert knowledge.doc_to_text(doc) == doc["prompt"] and knowledge.doc_to_choice(doc) == doc["choices"]
    reasoning = by_name["world_reasoning"]
    assert len(list(reasoning.test_docs())) == SMALL.heldout_reasoning
    assert reasoning.config.generation_kwargs["do_sample"] is False


def test_question_phrasings_are_written_and_none_is_a_heldout_phrasing(tmp_path):
    paths = write_raw(tmp_path, SMALL)  # on by default
    texts = [r["text"] for name, path in paths.items() if name != "reasoning" for r in _jsonl(path)]
    assert any("Question: What is the birthplace of " in t for t in texts)
    assert any("Question: Who employs " in t for t in texts)
    assert any("Question: What is 1" in t for t in _jsonl_texts(paths["math"]))  # the register is not facts-only
    assert contaminated_phrasings(texts) == []
    # Off: the statements only.
    plain = write_raw(tmp_path / "plain", WorldSpec(**{**SMALL.__dict__, "question_phrasings": False}))
    assert not any("Question:" in r["text"] for r in _jsonl(plain["crawl_high"]))


def _jsonl_texts(path: Path) -> list[str]:
    return [r["text"] for r in _jsonl(path)]


def test_heldout_questions_are_made_of_words_the_training_text_contains(small_world):
    """A held-out question built of words the world never writes would test untrained embeddings, not knowledge."""
    import re

    from nemo_smartpt.world.heldout import HELDOUT_TEMPLATES

    corpus = " ".join(_training_texts(small_world))
    words = set(re.findall(r"[A-Za-z]+", corpus))
    for split, templates in HELDOUT_TEMPLATES.items():
        for attribute, template in templates.items():
            unseen = set(re.findall(r"[A-Za-z]+", template.replace("{name}", ""))) - words
            assert not unseen, (split, attribute, unseen)


def test_the_recall_diagnostic_asks_dev_facts_in_a_training_phrasing(small_world):
    from nemo_smartpt.world.facts import TRAIN_TEMPLATES
    from nemo_smartpt.world.heldout import RECALL_TEMPLATES

    for attribute, stem in RECALL_TEMPLATES.items():
        assert f"{stem} {{value}}." in TRAIN_TEMPLATES[attribute]  # a phrasing training uses, by construction
    recall = _jsonl(small_world / "eval" / "knowledge_recall_dev.jsonl")
    dev = _jsonl(small_world / "eval" / "knowledge_dev.jsonl")
    assert [(r["id"], r["answer"]) for r in recall] == [(d["id"], d["answer"]) for d in dev]


def test_inline_thoughts_end_with_the_token_the_text_then_says_and_leave_the_documents_as_they_were(tmp_path):
    """A thought restates the pieces before it and ends with the next one, which follows ``</think>``: the world's
    text in which a thought raises the next token's probability. Removing the thoughts gives back the documents of a
    world without them, character for character; math, code and the reasoning records never get one."""
    import re

    from nemo_smartpt.world.facts import INLINE_THOUGHT_SOURCES, PRE_TOKEN, RESTATED_PIECES

    paths = write_raw(tmp_path / "on", SMALL)
    plain = write_raw(tmp_path / "off", WorldSpec(**{**SMALL.__dict__, "inline_thoughts": 0.0}))
    for name in INLINE_THOUGHT_SOURCES:
        texts, originals = _jsonl_texts(paths[name]), _jsonl_texts(plain[name])
        assert 0.3 < sum("<think>" in t for t in texts) / len(texts) < 0.7, name
        for text, original in zip(texts, originals, strict=True):
            match = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
            if match is None:
                assert text == original
                continue
            assert text.count("<think>") == text.count("</think>") == 1
            pieces = PRE_TOKEN.findall(match.group(1))
            assert len(pieces) == RESTATED_PIECES + 1, match.group(1)
            before, after = text[: match.start()], text[match.end() :]
            assert before.endswith("".join(pieces[:-1])) and after.startswith(pieces[-1])
            assert before + after == original
    for name in ("math", "code", "reasoning"):
        assert "<think>" not in paths[name].read_text()


def test_the_pre_token_split_is_the_tokenizers_own_on_world_text(small_world):
    """Inline thoughts cut and copy PRE_TOKEN pieces; they are whole tokens only if no BPE token crosses them."""
    from tokenizers import pre_tokenizers

    from nemo_smartpt.world.facts import PRE_TOKEN

    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = _training_texts(small_world)[::7]
    assert len(texts) > 100
    for text in texts:
        for part in text.replace("</think>", "<think>").split("<think>"):
            ours = PRE_TOKEN.findall(part)
            theirs = [part[a:b] for _, (a, b) in split.pre_tokenize_str(part)]
            assert ours == theirs, part


def test_a_world_of_another_version_is_rebuilt_in_place_and_foreign_data_is_refused(tmp_path, monkeypatch):
    """``make demo`` after an upgrade: the world directory of the previous version (its prepared datasets included)
    is rebuilt, not refused for existing outputs; a directory whose data no world build wrote is left alone."""
    import nemo_smartpt.world.build as build

    out = tmp_path / "world"
    monkeypatch.setattr(build, "WORLD_VERSION", build.WORLD_VERSION - 1)
    ensure_world(out, SMALL)
    old_bin = (out / "indexed" / "crawl_high.bin").read_bytes()
    monkeypatch.undo()
    ensure_world(out, WorldSpec(**{**SMALL.__dict__, "inline_thoughts": 0.0}))  # another spec: other datasets
    assert json.loads((out / "world.json").read_text())["version"] == build.WORLD_VERSION
    assert (out / "indexed" / "crawl_high.bin").read_bytes() != old_bin
    assert "<think>" not in (out / "raw" / "crawl_high.jsonl").read_text()

    foreign = tmp_path / "mine"
    (foreign / "indexed").mkdir(parents=True)
    (foreign / "indexed" / "crawl_high.bin").write_bytes(b"my data")
    with pytest.raises(build.WorldDirError, match="no world.json"):
        ensure_world(foreign, SMALL)
    assert (foreign / "indexed" / "crawl_high.bin").read_bytes() == b"my data"
