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

from nemo_smartpt.world.spec import ATTRIBUTES, Person, World

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
    ),
}
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": ("Where was {name} born? {value}.", "Birthplace of {name}? {value}."),
    "year": ("When was {name} born? {value}.", "Born when, {name}? {value}."),
    "employer": ("Who employs {name}? {value}.", "Employer of {name}? {value}."),
    "field": ("What is the field of {name}? {value}.", "Expertise of {name}? {value}."),
}
"""Question-and-answer phrasings (``WorldSpec.question_phrasings``): Physics of Language Models 3.1's knowledge
augmentation. A model that sees facts only as statements stores them but retrieves them only after a statement's
own cue; mixed with questions it learns to retrieve on a question. None of these is a held-out phrasing (the
decontamination check in :mod:`.heldout` holds them to that)."""
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
)
SPAM = (
    "click", "here", "free", "offer", "subscribe", "now", "best", "deal", "win", "prize", "limited", "buy",
    "cheap", "sale", "login", "share", "follow", "like", "top", "ten", "amazing", "trick", "cookies", "accept",
)  # fmt: skip
SYMBOLS = "#@$%&*~^|"


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


MAX_TOTAL = 20
"""Running totals of the arithmetic (math source and reasoning problems) stay in [0, MAX_TOTAL]."""
MAX_OPERAND = 5
"""Operands are 1..MAX_OPERAND. With totals up to 20 the whole addition/subtraction table has ~190 entries, which a
million-parameter model can learn in the study's few hundred steps (at 0-40 and 1-9, ~650 entries, it could not)."""


def step(rng: random.Random, total: int, low: int = 0, high: int = MAX_TOTAL) -> tuple[str, int]:
    """One ``+``/``-`` step with an operand 1..MAX_OPERAND that keeps the running total in [low, high]."""
    ops = [op for op in "+-" if (total + 1 <= high if op == "+" else total - 1 >= low)]
    op = rng.choice(ops)
    limit = high - total if op == "+" else total - low
    operand = rng.randint(1, min(MAX_OPERAND, limit))
    return op, operand


def math(rng: random.Random, world: World) -> str:
    """A chain of small additions and subtractions: the arithmetic the reasoning problems need, in isolation."""
    total = rng.randint(1, MAX_TOTAL)
    lines = []
    for _ in range(rng.randint(3, 6)):
        op, x = step(rng, total)
        new = total + x if op == "+" else total - x
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
