"""The data-matched pretraining/SFT split: zero overlap, exact budgets, determinism across runs and worker counts."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest

from nemo_smartpt.reasoning.config import PrepareConfig
from nemo_smartpt.reasoning.prepare import prepare
from nemo_smartpt.reasoning.select import SelectConfig
from nemo_smartpt.reasoning.split import SplitConfig, split_budgets


def write_examples(path: Path, n: int = 240) -> list[dict]:
    """n OpenThoughts3-style records of varied length; every 7th repeats an earlier question in other case/spacing."""
    rows = []
    for i in range(n):
        q = f"Question number {i}: what is {i} squared?"
        if i % 7 == 6:
            q = "  " + f"QUESTION NUMBER {i - 3}:   what is {i - 3} squared?".upper()
        thought = "Multiply. " * (1 + (i * 37) % 23)
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": q},
                    {"from": "gpt", "value": f"<think>{thought}</think>{i * i}"},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def norm(q: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", q).lower().split())


def reference(rows, fraction, max_tokens=0, max_examples=0, salt=""):
    """A naive re-implementation of the documented rule, to compare against."""
    sft_tok, sft_ex = int(max_tokens * fraction), int(max_examples * fraction)
    caps = {"sft": [sft_tok, sft_ex], "pretrain": [max_tokens - sft_tok, max_examples - sft_ex]}
    used = {"sft": [0, 0], "pretrain": [0, 0]}
    taken = {"sft": [], "pretrain": []}
    for row in rows:
        q = row["conversations"][0]["value"]
        thought, answer = row["conversations"][1]["value"][len("<think>") :].split("</think>")
        text = f"{q.strip()}\n\n<think>\n{thought.strip()}\n</think>\n\n{answer.strip()}"
        n = len(text.encode()) + 1
        h = int.from_bytes(hashlib.blake2b(norm(q).encode(), digest_size=8, key=salt.encode()).digest(), "big")
        side = "sft" if h / 2**64 < fraction else "pretrain"
        (cap_t, cap_e), (u_t, u_e) = caps[side], used[side]
        if (cap_e and u_e >= cap_e) or (cap_t and u_t + n > cap_t):
            continue
        used[side] = [u_t + n, u_e + 1]
        taken[side].append(q.strip())
    return taken


def run(tmp_path, name, src, workers=1, chunk_size=64, **kw):
    select = SelectConfig(max_tokens=kw.pop("max_tokens", 0), max_examples=kw.pop("max_examples", 0))
    split = SplitConfig(sft_fraction=kw.pop("fraction", 0.3), salt=kw.pop("salt", ""))
    cfg = PrepareConfig(
        input=str(src), output_prefix=str(tmp_path / name), workers=workers, chunk_size=chunk_size, progress=False
    )
    cfg.select, cfg.split = select, split
    stats = prepare(cfg)
    sft = [json.loads(line)["messages"][0]["content"] for line in (tmp_path / f"{name}.sft.jsonl").open()]
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / name))
    pre = [bytes(ds[i][:-1].tolist()).decode().split("\n\n<think>")[0] for i in range(len(ds))]
    return stats, pre, sft


@pytest.mark.parametrize(
    ("max_tokens", "max_examples"), [(0, 0), (0, 100), (9000, 0), (9000, 100)], ids=["all", "ex", "tok", "both"]
)
def test_split_matches_reference_and_is_disjoint(tmp_path, max_tokens, max_examples):
    src = tmp_path / "in.jsonl"
    rows = write_examples(src)
    stats, pre, sft = run(tmp_path, "s", src, max_tokens=max_tokens, max_examples=max_examples)
    want = reference(rows, 0.3, max_tokens, max_examples)
    assert pre == want["pretrain"] and sft == want["sft"]
    assert not {norm(q) for q in pre} & {norm(q) for q in sft}
    budget = stats["budget"]
    if max_examples and not max_tokens:  # enough candidates on both sides: the example budget is met exactly
        assert (budget["sft"]["examples"], budget["pretrain"]["examples"]) == (30, 70)
    if max_examples:
        assert budget["sft"]["examples"] <= 30 and budget["pretrain"]["examples"] <= 70
    if max_tokens:
        assert budget["sft"]["tokens"] <= 2700 and budget["pretrain"]["tokens"] <= 6300
    assert stats["sft"]["examples"] == len(sft) and stats["documents"] == len(pre)


def test_same_bytes_across_runs_and_worker_counts(tmp_path):
    src = tmp_path / "in.jsonl"
    write_examples(src)
    run(tmp_path, "a", src, workers=1, max_tokens=12000)
    run(tmp_path, "b", src, workers=1, max_tokens=12000)
    run(tmp_path, "c", src, workers=2, chunk_size=5, max_tokens=12000)
    for ext in (".bin", ".idx", ".sft.jsonl"):
        a = (tmp_path / f"a{ext}").read_bytes()
        assert a == (tmp_path / f"b{ext}").read_bytes() == (tmp_path / f"c{ext}").read_bytes(), ext


def test_salt_draws_another_split_of_the_same_size(tmp_path):
    src = tmp_path / "in.jsonl"
    write_examples(src)
    _, pre_a, sft_a = run(tmp_path, "a", src, max_examples=100)
    _, pre_b, sft_b = run(tmp_path, "b", src, max_examples=100, salt="seed-2")
    assert (len(pre_a), len(sft_a)) == (len(pre_b), len(sft_b)) == (70, 30)
    assert sft_a != sft_b


def test_sft_file_is_bridge_chat_jsonl(tmp_path):
    src = tmp_path / "in.jsonl"
    write_examples(src, 30)
    run(tmp_path, "c", src, fraction=0.5)
    from megatron.bridge.data.datasets.utils import _convert_to_openai_messages

    for line in (tmp_path / "c.sft.jsonl").open():
        chat = _convert_to_openai_messages(json.loads(line))
        assert [m["role"] for m in chat] == ["user", "assistant"] and chat[1]["content"].startswith("<think>\n")


def test_split_budgets_close_empty_sides():
    pre, sft = split_budgets(1000, 0, 0.0)
    assert not sft.take(1) and pre.take(1000) and pre.full and not pre.take(1)
    pre, sft = split_budgets(0, 10, 1.0)
    assert not pre.take(1) and sft.take(5)
    pre, sft = split_budgets(0, 0, 0.5)
    assert pre.take(10**9) and sft.take(10**9) and not (pre.full or sft.full)
