"""Held-out evaluation sets of the world and the instance-level contamination checks.

Knowledge: every (person, attribute) fact, asked in a phrasing no training document uses; the choices are *all*
values of the attribute (chance = 1 / number of values), scored by log-likelihood. Two unseen phrasings exist:
``dev`` for design decisions and ``test`` for reported numbers.

Reasoning: problems whose instance (start count and steps, :mod:`.problems`) is held out, so its number combination
never occurs in training; scored by generating thought and answer greedily (exact match of the number).

Why not 13-gram overlap: every problem of a templated world shares its 13-grams ("gives away 3, then gets 5 more.
How many apples does") with hundreds of training problems, so a 13-gram rule flags every held-out item (the old
bundled corpus lost all 500 held-out records to it) while saying nothing about what matters: whether this exact
number combination, or this exact question phrasing, was trained on. The checks here test exactly that.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from nemo_smartpt.world.problems import instance_of, sample_problems
from nemo_smartpt.world.spec import ATTRIBUTES, World, WorldSpec

HELDOUT_TEMPLATES: dict[str, dict[str, str]] = {
    "test": {
        "city": "Question: In which city was {name} born?\nAnswer:",
        "year": "Question: In what year was {name} born?\nAnswer:",
        "employer": "Question: Which company does {name} work for?\nAnswer:",
        "field": "Question: What did {name} study?\nAnswer:",
    },
    "dev": {
        "city": "Question: In which city did {name} come into the world?\nAnswer:",
        "year": "Question: In which year did {name} come into the world?\nAnswer:",
        "employer": "Question: For which company does {name} have a job?\nAnswer:",
        "field": "Question: Which subject did {name} train in?\nAnswer:",
    },
}
"""Held-out questions: wordings no training text uses, in the world's question register (``Question: ...?\nAnswer:``,
which training uses for other wordings and for arithmetic), made of the world's words. A question made of words the
world never contains (the first dev set was "Profile of X. Hometown:") tests nothing about knowledge: its tokens'
embeddings are never trained, so the last position's state is noise to a model that knows every fact (study
README, probe p5). The test wordings are the ones fixed with the world's design; dev's were rewritten into the
register for version 5."""
RECALL_TEMPLATES: dict[str, str] = {
    "city": "{name} was born in the city of",
    "year": "{name} was born in the year",
    "employer": "{name} works for",
    "field": "{name} studied",
}
"""A diagnostic, not a held-out set: the dev facts asked in a *training* phrasing (``world_knowledge_recall_dev``).
Beside ``world_knowledge_dev`` it separates "the facts are not stored" from "stored, but not retrieved on an
unseen question"."""
THINK_PROMPT = "\n\n<think>\n"
"""What follows a question in the rendered training documents (``prepare``'s default template), so the held-out
prompt ends where the model's thought begins."""


def knowledge_items(world: World, split: str) -> list[dict]:
    """One lm-eval document per fact: ``{id, entity, attribute, prompt, choices, answer}`` (``split``: test, dev or
    recall_dev)."""
    templates = RECALL_TEMPLATES if split == "recall_dev" else HELDOUT_TEMPLATES[split]
    items = []
    for person in world.people:
        for attribute in ATTRIBUTES:
            candidates = world.candidates(attribute)
            items.append(
                {
                    "id": f"{person.name}/{attribute}",
                    "entity": person.name,
                    "attribute": attribute,
                    "prompt": templates[attribute].format(name=person.name),
                    "choices": candidates,  # lm-eval puts its target_delimiter (" ") before each
                    "answer": candidates.index(person.value(attribute)),
                }
            )
    return items


def reasoning_items(world: World, spec: WorldSpec, split: str, exclude=()) -> list[dict]:
    """Held-out problems: ``{id, question, prompt, answer, thought}`` (answer is the bare number as text)."""
    rng = random.Random(f"world-{spec.seed}-heldout-{split}")
    problems = sample_problems(rng, world, spec.heldout_reasoning, spec.seed, heldout=True, exclude=exclude)
    return [
        {
            "id": f"{split}-{i}",
            "question": p["question"],
            "prompt": p["question"] + THINK_PROMPT,
            "thought": p["thought"],
            "answer": p["answer"].removeprefix("The answer is ").rstrip("."),
        }
        for i, p in enumerate(problems)
    ]


def phrasing_skeletons(split: str | None = None) -> list[str]:
    """The fixed text of the held-out phrasings (the parts around ``{name}``), which no training text may contain."""
    splits = [split] if split else list(HELDOUT_TEMPLATES)
    pieces = []
    for name in splits:
        for template in HELDOUT_TEMPLATES[name].values():
            pieces += [p.strip() for p in template.split("{name}") if len(p.strip()) >= 6]
    return pieces


def contaminated_phrasings(texts: Iterable[str]) -> list[tuple[int, str]]:
    """``(text index, skeleton)`` for every training text that contains a held-out phrasing."""
    pattern = re.compile("|".join(re.escape(p) for p in phrasing_skeletons()))
    return [(i, m.group()) for i, text in enumerate(texts) for m in [pattern.search(text)] if m]


def contaminated_instances(questions: Iterable[str], heldout_questions: Iterable[str]) -> list[tuple[int, object]]:
    """``(question index, instance)`` for every training question whose problem instance is a held-out one."""
    heldout = {instance_of(q) for q in heldout_questions} - {None}
    return [(i, inst) for i, q in enumerate(questions) for inst in [instance_of(q)] if inst in heldout]
