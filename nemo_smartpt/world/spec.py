"""The sizes and seed of the world, and its entities (one dataclass; no I/O)."""

from __future__ import annotations

import random
from dataclasses import dataclass

WORLD_VERSION = 7  # bump when any generator's output changes, so built worlds are rebuilt

SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "pha", "ri", "zo", "bel", "cor", "nav", "ul", "es"]
FIELDS = ["chemistry", "music", "history", "law", "medicine", "painting", "physics", "poetry", "farming", "weaving"]
ATTRIBUTES = ("city", "year", "employer", "field")
ITEMS = ("apples", "coins", "books", "stamps", "shells", "marbles")
"""What the people of arithmetic problems count."""


@dataclass
class WorldSpec:
    """Sizes of the world: entities, documents per source, held-out items. Tokens per source follow from these."""

    seed: int = 0
    """Everything (names, facts, documents, held-out sets) is a function of this seed."""
    people: int = 48
    """Entities; each has one value of every attribute, so knowledge = 4 x people facts. 48, not 8: with 8 every arm,
    the natural distribution included, stored every fact (the study's knowledge comparisons at the ceiling); with 48
    the natural distribution stores about half and the planned blend nearly all (probes, study README, round 3)."""
    cities: int = 16
    """Candidate birth cities (the knowledge question over cities has this many choices)."""
    companies: int = 12
    """Candidate employers."""
    first_year: int = 1950
    """Birth years are first_year .. first_year + years - 1."""
    years: int = 40
    """Candidate birth years."""
    crawl_high: int = 1500
    """Documents of each source. Defaults give ~45% low + ~20% medium-low crawl tokens (natural distribution)."""
    crawl_medium_high: int = 1500
    crawl_medium: int = 2000
    crawl_medium_low: int = 3000
    crawl_low: int = 12000
    math: int = 1500
    code: int = 600
    wiki: int = 300
    reasoning: int = 700
    """Training reasoning problems (before the SFT split), each a distinct instance: most of the ~800 instances that
    are not held out."""
    heldout_reasoning: int = 100
    """Held-out reasoning problems (test); as many again for dev."""
    tokenizer_vocab: int = 2048
    """BPE vocabulary of the world's tokenizer (special tokens included)."""
    question_phrasings: bool = True
    """Also write facts as question-and-answer pairs (``facts.QUESTION_TEMPLATES``, none of them a held-out
    phrasing): knowledge augmentation, so that a model retrieves facts on an unseen question (study README)."""
    inline_thoughts: float = 0.5
    """Share of the documents of ``facts.INLINE_THOUGHT_SOURCES`` that think once before a token
    (:func:`~nemo_smartpt.world.facts.think_before_a_token`): text in which a thought can raise the next token's
    probability, which RLP needs to have anything to learn (study README, round 5). 0 turns it off."""


@dataclass(frozen=True)
class Person:
    name: str
    city: str
    year: int
    employer: str
    field: str

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))


@dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    cities: tuple[str, ...]
    companies: tuple[str, ...]
    years: tuple[int, ...]
    fields: tuple[str, ...]
    question_phrasings: bool = True

    def candidates(self, attribute: str) -> list[str]:
        """Every value the attribute can take (the choices of a knowledge question)."""
        values = {"city": self.cities, "year": self.years, "employer": self.companies, "field": self.fields}
        return [str(v) for v in values[attribute]]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def make_world(spec: WorldSpec) -> World:
    """Entities and their attribute values, deterministic for ``spec.seed``; every name is unique."""
    rng = random.Random(f"world-{spec.seed}")
    used: set[str] = set()

    def fresh(parts: int, suffix: str = "") -> str:
        while True:
            word = _word(rng, parts) + suffix
            if word not in used:
                used.add(word)
                return word

    cities = tuple(fresh(2, "a") for _ in range(spec.cities))
    companies = tuple(fresh(2, "x") for _ in range(spec.companies))
    years = tuple(range(spec.first_year, spec.first_year + spec.years))
    people = tuple(
        Person(fresh(3), rng.choice(cities), rng.choice(years), rng.choice(companies), rng.choice(FIELDS))
        for _ in range(spec.people)
    )
    return World(people, cities, companies, years, tuple(FIELDS), spec.question_phrasings)


def tiny_spec(seed: int = 0) -> WorldSpec:
    """A world small enough for tests (seconds to build): 8 people, a few hundred documents, a 700-entry BPE."""
    return WorldSpec(
        seed=seed,
        people=8,
        # Enough clean tokens (x epoch caps) for the demo test's 24 steps of 16 x 128 tokens (~49k).
        crawl_high=150,
        crawl_medium_high=150,
        crawl_medium=80,
        crawl_medium_low=100,
        crawl_low=200,
        math=150,
        code=60,
        wiki=50,
        reasoning=200,
        heldout_reasoning=20,
        tokenizer_vocab=700,
    )
