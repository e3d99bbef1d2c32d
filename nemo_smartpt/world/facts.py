"""Training text of the world: the same facts at five crawl quality tiers, plus wiki-, math- and code-like sources.

Every fact sentence comes from :data:`TRAIN_TEMPLATES` (four phrasings per attribute, so a model learns the fact,
not one sentence). The tiers differ in how densely facts appear and what surrounds them:

=============  =====================================================================
high           a clean paragraph stating all four facts of one person
medium_high    two or three facts of one person with a line of commentary
medium         one fact buried in four to eight sentences of chatter
medium_low     chatter and spam; a fact in 40% of documents
low            word salad and symbols; a fact in 10% of documents
=============  =====================================================================
"""

from __future__ import annotations

import random
import re

from nemo_smartpt.world.spec import ATTRIBUTES, ITEMS, Person, World

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": (
        "{name} was born in the city of {value}.",
        "The birthplace of {name} is {value}.",
        "{name} came into the world in {value}.",
        "{name} grew up in {value}, where {name} was born.",
    ),
    "year": (
        "{name} was born in the year {value}.",
        "The birth year of {name} is {value}.",
        "In {value}, {name} was born.",
        "{name} has been alive since {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "The employer of {name} is {value}.",
        "{name} has a job at {value}.",
    ),
    "field": (
        "{name} studied {value}.",
        "The subject {name} studied is {value}.",
        "{name} trained in {value}.",
        "{name} is an expert in {value}.",
        "{name} went on to study {value}.",
    ),
}
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": (
        "Question: What is the birthplace of {name}?\nAnswer: {value}.",
        "Question: Where did {name} grow up?\nAnswer: {value}.",
    ),
    "year": (
        "Question: What is the birth year of {name}?\nAnswer: {value}.",
        "Question: Since when has {name} been alive?\nAnswer: {value}.",
    ),
    "employer": (
        "Question: Who is the employer of {name}?\nAnswer: {value}.",
        "Question: Who employs {name}?\nAnswer: {value}.",
    ),
    "field": (
        "Question: What is {name} an expert in?\nAnswer: {value}.",
        "Question: What has {name} trained in?\nAnswer: {value}.",
    ),
}
"""Question-and-answer phrasings (``WorldSpec.question_phrasings``, on by default): Physics of Language Models 3.1's
knowledge augmentation, in the world's question register (``Question: ...?\nAnswer: ...``, which the math source
uses too). A model that sees facts only as statements stores them but retrieves them only after a statement's own
cue (study README: 1.000 on a training phrasing, 0.104 on an unseen one); mixed with questions it can learn to
retrieve on a question. None of these is a held-out phrasing (the decontamination check in :mod:`.heldout` holds
them to that): the held-out questions use other wordings in the same register."""
WIKI_TEMPLATE = (
    "{name}\n\n{name} (born {year} in {city}) is a specialist in {field}. "
    "{name} is known for work at {employer}, a company where {name} has been employed for many years."
)
CHATTER = (
    "I was thinking about this the other day.",
    "The weather has been nice lately.",
    "My neighbour told me a funny story.",
    "We went to the market on the weekend.",
    "Nobody really knows what happens next.",
    "It was a long day at the office.",
    "The coffee here is not bad at all.",
    "Some people say that things were better before.",
    "Let me tell you something interesting.",
    "Anyway, that is what I heard.",
    "The train was late again this morning.",
    "Honestly, I have no strong opinion on it.",
    "You should come and visit some time.",
    "I forget which day it was.",
    "For what it is worth, I liked it.",
    "Which way is the station from here?",
)
SPAM = (
    "click", "here", "free", "offer", "subscribe", "now", "best", "deal", "win", "prize", "limited", "buy",
    "cheap", "sale", "login", "share", "follow", "like", "top", "ten", "amazing", "trick", "cookies", "accept",
)  # fmt: skip
SYMBOLS = "#@$%&*~^|"

INLINE_THOUGHT_SOURCES = ("crawl_high", "crawl_medium_high", "crawl_medium", "crawl_medium_low", "crawl_low", "wiki")
"""Sources whose writers sometimes think before a token (``WorldSpec.inline_thoughts``). Not the reasoning records
(their thoughts are the worked solutions), not code (its lines are syntax), and not math: thoughts cut into its sums
held back the reasoning records' transition (round 5: Ampere seed 2, dev reasoning at 500 steps 0.22 with math
thoughts, 0.92 without; 0.94 on version 6)."""
PRE_TOKEN = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")
"""The byte-level BPE's pre-tokenization (GPT-2's split) on the world's ASCII text: no token crosses these pieces,
and nearly every piece is one token of the world's tokenizer (a test compares it with ``tokenizers``' own)."""
RESTATED_PIECES = 2
"""Pieces an inline thought restates before the one it says next. Always the same number, so that a small model
learns where a thought ends (round 5: with one to three words restated it ran on past the next word)."""


def think_before_a_token(rng: random.Random, text: str) -> str:
    """``text`` with one inline thought before a random piece: ``born in the year<think> the year 1966</think> 1966.``

    The thought restates the :data:`RESTATED_PIECES` pieces before the cut and ends with the piece that follows it,
    which the text then says. This is the world's text in which a thought raises the next token's probability: after
    ``</think>`` comes the thought's last token, a copy a two-layer model learns. An RLP thought inserted before any
    token is then scored by what it ends with, and the policy gains by ending it with the right next token. Without
    it ``</think>`` is only ever followed by a reasoning record's answer, and every inserted thought costs ~12 nats
    whatever it says (studies 2 and 3, study README). Cuts fall before any piece, punctuation included, since RLP
    draws its target positions uniformly over tokens; only pieces of bare whitespace (line breaks) are left out."""
    pieces = PRE_TOKEN.findall(text)
    # No whitespace-only piece in a thought: split on its own between the markers, "\n" + "\n" would become "\n\n".
    cuts = [
        cut
        for cut in range(RESTATED_PIECES, len(pieces))
        if not any(piece.isspace() for piece in pieces[cut - RESTATED_PIECES : cut + 1])
    ]
    if not cuts:
        return text
    cut = rng.choice(cuts)
    thought = "".join(pieces[cut - RESTATED_PIECES : cut + 1])
    return "".join(pieces[:cut]) + f"<think>{thought}</think>" + "".join(pieces[cut:])


def fact_sentence(rng: random.Random, person: Person, attribute: str, questions: bool = False) -> str:
    templates = TRAIN_TEMPLATES[attribute] + (QUESTION_TEMPLATES[attribute] if questions else ())
    template = rng.choice(templates)
    return template.format(name=person.name, value=person.value(attribute))


def _facts(rng: random.Random, world: World, person: Person, count: int) -> list[str]:
    return [fact_sentence(rng, person, a, world.question_phrasings) for a in rng.sample(ATTRIBUTES, count)]


def _chatter(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(CHATTER) for _ in range(count)]


def _spam(rng: random.Random, words: int) -> str:
    out = []
    for _ in range(words):
        out.append(rng.choice(SPAM) if rng.random() < 0.8 else "".join(rng.choices(SYMBOLS, k=rng.randint(1, 4))))
    return " ".join(out)


def crawl_high(rng: random.Random, world: World) -> str:
    return " ".join(_facts(rng, world, rng.choice(world.people), 4))


def crawl_medium_high(rng: random.Random, world: World) -> str:
    lines = _facts(rng, world, rng.choice(world.people), rng.randint(2, 3))
    lines.insert(rng.randint(0, len(lines)), rng.choice(CHATTER))
    return " ".join(lines)


def crawl_medium(rng: random.Random, world: World) -> str:
    lines = _chatter(rng, rng.randint(4, 8))
    lines.insert(
        rng.randint(0, len(lines)),
        fact_sentence(rng, rng.choice(world.people), rng.choice(ATTRIBUTES), world.question_phrasings),
    )
    return " ".join(lines)


def crawl_medium_low(rng: random.Random, world: World) -> str:
    parts = [_spam(rng, rng.randint(6, 14)), *_chatter(rng, rng.randint(2, 4)), _spam(rng, rng.randint(4, 10))]
    if rng.random() < 0.4:
        parts.insert(
            rng.randint(0, len(parts)),
            fact_sentence(rng, rng.choice(world.people), rng.choice(ATTRIBUTES), world.question_phrasings),
        )
    return " ".join(parts)


def crawl_low(rng: random.Random, world: World) -> str:
    parts = [_spam(rng, rng.randint(15, 35))]
    if rng.random() < 0.1:
        parts.append(fact_sentence(rng, rng.choice(world.people), rng.choice(ATTRIBUTES), world.question_phrasings))
        parts.append(_spam(rng, rng.randint(3, 10)))
    return " ".join(parts)


def wiki(rng: random.Random, world: World) -> str:
    p = rng.choice(world.people)
    return WIKI_TEMPLATE.format(name=p.name, year=p.year, city=p.city, field=p.field, employer=p.employer)


MAX_TOTAL = 15
"""Running totals of the arithmetic (math source and reasoning problems) stay in [0, MAX_TOTAL]."""
MAX_OPERAND = 5
"""Operands are 1..MAX_OPERAND. With totals up to 15 the whole addition/subtraction table has ~140 entries, which a
million-parameter model can learn in the study's few hundred steps (at 0-40 and 1-9, ~650 entries, it could not)."""


ACTIONS = {"+": "gets {x} more", "-": "gives away {x}"}
"""How a word problem says a step (the math source's one-step problems and :mod:`.problems`)."""


def apply_step(total: int, op: str, x: int) -> int:
    return total + x if op == "+" else total - x


def step(rng: random.Random, total: int, low: int = 0, high: int = MAX_TOTAL) -> tuple[str, int]:
    """One ``+``/``-`` step with an operand 1..MAX_OPERAND that keeps the running total in [low, high]."""
    ops = [op for op in "+-" if (total + 1 <= high if op == "+" else total - 1 >= low)]
    op = rng.choice(ops)
    limit = high - total if op == "+" else total - low
    operand = rng.randint(1, min(MAX_OPERAND, limit))
    return op, operand


def math(rng: random.Random, world: World) -> str:
    """Arithmetic the reasoning problems need, in isolation: a chain of small additions and subtractions, a few
    sums asked in the world's question register (a quarter each), or one-step word problems (half).

    The word problems restate the name and the numbers a few tokens after they appear (``Kal has 5 coins and gets 3
    more, so Kal has 5 + 3 = 8 coins.``): the short-range copying that the reasoning thoughts need over longer spans,
    as word problems in real math text train it. One step each, so no two-step (held-out) instance occurs."""
    kind = rng.random()
    if kind < 0.5:
        lines = []
        for _ in range(rng.randint(2, 4)):
            name, item, total = rng.choice(world.people).name, rng.choice(ITEMS), rng.randint(0, MAX_TOTAL)
            op, x = step(rng, total)
            verb, new = ACTIONS[op].format(x=x), apply_step(total, op, x)
            lines.append(f"{name} has {total} {item} and {verb}, so {name} has {total} {op} {x} = {new} {item}.")
        return " ".join(lines)
    if kind < 0.75:
        lines = []
        for _ in range(rng.randint(2, 4)):
            total = rng.randint(0, MAX_TOTAL)
            op, x = step(rng, total)
            lines.append(f"Question: What is {total} {op} {x}?\nAnswer: {apply_step(total, op, x)}.")
        return "\n".join(lines)
    total = rng.randint(1, MAX_TOTAL)
    lines = []
    for _ in range(rng.randint(3, 6)):
        op, x = step(rng, total)
        new = apply_step(total, op, x)
        lines.append(f"{total} {op} {x} = {new}.")
        total = new if rng.random() < 0.7 else rng.randint(1, MAX_TOTAL)
    return " ".join(lines)


def code(rng: random.Random, world: World) -> str:
    k = rng.randint(1, 9)
    op, word = rng.choice([("+", "add"), ("-", "sub")])
    x = rng.randint(k if op == "-" else 0, 30)
    result = x + k if op == "+" else x - k
    return f"def {word}_{k}(x):\n    return x {op} {k}\n\nassert {word}_{k}({x}) == {result}\n"


SOURCES = {
    "crawl_high": (crawl_high, "high", "crawl"),
    "crawl_medium_high": (crawl_medium_high, "medium_high", "crawl"),
    "crawl_medium": (crawl_medium, "medium", "crawl"),
    "crawl_medium_low": (crawl_medium_low, "medium_low", "crawl"),
    "crawl_low": (crawl_low, "low", "crawl"),
    "math": (math, "high", "math"),
    "code": (code, "high", "code"),
    "wiki": (wiki, "high", "wiki"),
}
"""Text source name -> (generator, quality tier, category)."""
