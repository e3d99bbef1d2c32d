"""The bundled corpus: a small synthetic world the project generates itself (no download), for the demo and study.

What it is, honestly: text about ~fictional entities (countries with capitals, rivers, exports and founding years),
written at different quality levels, plus arithmetic, tiny code, encyclopedic "wiki" paragraphs and a reasoning set
of multi-step word problems with worked thoughts in the OpenThoughts layout. Held-out evaluation tasks ask for facts
(knowledge) and for the answers of unseen multi-step problems (reasoning); both are multiple choice scored by
log-likelihood, so a tiny model's preferences can be measured without generation.

Quality levels mimic what a crawl classifier separates: ``high`` states facts cleanly, ``medium`` buries them in
chatter, ``low`` is mostly noise with occasional garbled facts. The generator is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

CORPUS_VERSION = 3  # bump when the generator's output changes, so built corpora are rebuilt

SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "pha", "ri", "zo", "bel", "cor", "nav", "ul", "es"]
EXPORTS = ["salt", "copper", "wool", "glass", "tea", "amber", "iron", "silk", "rice", "timber"]
FILLER = [
    "honestly",
    "you know",
    "click here for more",
    "as everyone says",
    "lol",
    "read the full story",
    "subscribe now",
    "in my humble opinion",
    "breaking news",
    "trust me",
]


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    river: str
    export: str
    founded: int


@dataclass
class CorpusSpec:
    """Sizes of the bundled corpus (documents per source) and its world."""

    num_countries: int = 16
    crawl_high: int = 600
    crawl_medium: int = 900
    crawl_low: int = 900
    math: int = 500
    code: int = 300
    wiki: int = 200
    reasoning: int = 500
    eval_knowledge: int = 16
    eval_reasoning: int = 200
    seed: int = 0


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def make_world(spec: CorpusSpec) -> list[Country]:
    rng = random.Random(spec.seed)
    names: set[str] = set()
    countries = []
    while len(countries) < spec.num_countries:
        name, capital, river = _word(rng, 2), _word(rng, 2), _word(rng, 3)
        if len({name, capital, river} | names) != len(names) + 3:
            continue
        names |= {name, capital, river}
        countries.append(Country(name, capital, river, rng.choice(EXPORTS), rng.randint(1200, 1950)))
    return countries


def _facts(c: Country) -> list[str]:
    return [
        f"The capital of {c.name} is {c.capital}.",
        f"The river {c.river} flows through {c.name}.",
        f"{c.name} is known for its {c.export}.",
        f"{c.name} was founded in {c.founded}.",
    ]


def _crawl_high(rng, world):
    c = rng.choice(world)
    facts = _facts(c)
    rng.shuffle(facts)
    return " ".join(facts[: rng.randint(2, 4)])


def _crawl_medium(rng, world):
    c = rng.choice(world)
    fact = rng.choice(_facts(c))
    chatter = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8)))
    return f"{chatter.capitalize()}, {fact[0].lower()}{fact[1:]} {rng.choice(FILLER)}!"


def _crawl_low(rng, world):
    words = [w for c in rng.sample(world, 3) for w in (c.name, c.capital, c.export)] + rng.sample(FILLER, 4)
    rng.shuffle(words)
    noise = "".join(rng.choice("#@$%&*~^") for _ in range(rng.randint(2, 6)))
    return f"{' '.join(words)} {noise} {rng.choice(FILLER).upper()}"


def _math(rng, world):
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
    return f"{a} + {b} = {a + b}. {a + b} * {c} = {(a + b) * c}. {a} - {b} = {a - b}."


def _code(rng, world):
    name, k = rng.choice(["double", "triple", "shift", "scale"]), rng.randint(2, 9)
    return f"def {name}_{k}(x):\n    return x * {k}\n\nassert {name}_{k}(3) == {3 * k}\n"


def _wiki(rng, world):
    c = rng.choice(world)
    return (
        f"{c.name}\n\n{c.name} is a country whose capital is {c.capital}. It was founded in {c.founded}. "
        f"The {c.river} river crosses the country, and its main export is {c.export}."
    )


def word_problem(rng: random.Random, world: list[Country]) -> tuple[str, list[str], int, int]:
    """A three-step problem about a country's export; returns (question, thought steps, answer, factor)."""
    c = rng.choice(world)
    start, bought, factor = rng.randint(3, 30), rng.randint(2, 20), rng.randint(2, 4)
    sold = rng.randint(1, min(10, start + bought - 1))  # never sells more than she has
    question = (
        f"A trader from {c.name} has {start} crates of {c.export}. She buys {bought} more, sells {sold}, "
        f"and then multiplies her stock by {factor}. How many crates does she have?"
    )
    after_buy = start + bought
    after_sell = after_buy - sold
    answer = after_sell * factor
    steps = [
        f"Start with {start}. Buying {bought} gives {start} + {bought} = {after_buy}.",
        f"Selling {sold} leaves {after_buy} - {sold} = {after_sell}.",
        f"Multiplying by {factor} gives {after_sell} * {factor} = {answer}.",
    ]
    return question, steps, answer, factor


GENERATORS = {
    "crawl_high": _crawl_high,
    "crawl_medium": _crawl_medium,
    "crawl_low": _crawl_low,
    "math": _math,
    "code": _code,
    "wiki": _wiki,
}
SOURCE_META = {
    "crawl_high": ("high", "crawl"),
    "crawl_medium": ("medium", "crawl"),
    "crawl_low": ("low", "crawl"),
    "math": ("high", "math"),
    "code": ("high", "code"),
    "wiki": ("high", "wiki"),
    "reasoning": ("high", "reasoning"),
}


def write_corpus(out_dir: str | Path, spec: CorpusSpec | None = None) -> dict[str, Path]:
    """Write raw jsonl per source (``text`` records; reasoning in the OpenThoughts ``conversations`` layout) and the
    held-out evaluation tasks (``eval_knowledge.jsonl``, ``eval_reasoning.jsonl``). Returns source name -> path."""
    spec = spec or CorpusSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(spec)
    paths: dict[str, Path] = {}
    for name, make in GENERATORS.items():
        rng = random.Random(f"{spec.seed}-{name}")
        path = out / f"{name}.jsonl"
        with path.open("w") as handle:
            for _ in range(getattr(spec, name)):
                handle.write(json.dumps({"text": make(rng, world)}) + "\n")
        paths[name] = path
    rng = random.Random(f"{spec.seed}-reasoning")
    path = out / "reasoning.jsonl"
    seen: set[str] = set()
    with path.open("w") as handle:
        while len(seen) < spec.reasoning:
            question, steps, answer, _ = word_problem(rng, world)
            if question in seen:
                continue
            seen.add(question)
            value = (
                "<|begin_of_thought|>\n" + "\n".join(steps) + "\n<|end_of_thought|>\n\n"
                f"<|begin_of_solution|>\nThe answer is {answer}.\n<|end_of_solution|>"
            )
            convo = [{"from": "user", "value": question}, {"from": "assistant", "value": value}]
            handle.write(json.dumps({"conversations": convo, "domain": "math"}) + "\n")
    paths["reasoning"] = path
    _write_eval(out, world, spec, seen)
    return paths


def _write_eval(out: Path, world: list[Country], spec: CorpusSpec, train_questions: set[str]) -> None:
    rng = random.Random(f"{spec.seed}-eval")
    with (out / "eval_knowledge.jsonl").open("w") as handle:
        # Three facts per country, each asked as its training sentence would state it, with three distractors.
        questions = [
            (lambda c: f"The capital of {c.name} is", lambda c: c.capital, lambda c: f" {c.capital}."),
            (lambda c: f"The river {c.river} flows through", lambda c: c.name, lambda c: f" {c.name}."),
            (lambda c: f"{c.name} is known for its", lambda c: c.export, lambda c: f" {c.export}."),
        ]
        for c in rng.sample(world, min(spec.eval_knowledge, len(world))):
            for prompt, key, render in questions:
                others = list(dict.fromkeys(key(o) for o in world if key(o) != key(c)))
                options = [c, *[next(o for o in world if key(o) == k) for k in rng.sample(others, 3)]]
                rng.shuffle(options)
                record = {"prompt": prompt(c), "choices": [render(o) for o in options]}
                record["answer"] = options.index(c)
                handle.write(json.dumps(record) + "\n")
    with (out / "eval_reasoning.jsonl").open("w") as handle:
        written = 0
        while written < spec.eval_reasoning:
            question, _, answer, factor = word_problem(rng, world)
            if question in train_questions:
                continue  # held out: never a training question
            # Distractors are multiples of the last factor too, so divisibility does not give the answer away.
            wrong = [answer + factor * k for k in (-3, -2, -1, 1, 2, 3, 4) if answer + factor * k > 0]
            choices = [answer, *rng.sample(wrong, 3)]
            rng.shuffle(choices)
            record = {"prompt": f"{question} The answer is", "choices": [f" {x}." for x in choices]}
            record["answer"] = choices.index(answer)
            handle.write(json.dumps(record) + "\n")
            written += 1
