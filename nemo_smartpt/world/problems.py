"""Multi-step word problems with worked thoughts (the world's reasoning data), and their instance keys.

A problem is an *instance* ``(start, ((op, x), ...))``: a start count and two ``+``/``-`` steps with operands 1-5,
running totals kept in [0, 15] (about a thousand instances). The person and the item only dress it. Held-out problems are the
instances whose keyed hash falls in :data:`HELDOUT_SHARE` of the hash space: no training problem ever has one, so a
held-out problem's number combination never occurs in training, while every single step (``12 + 5 = 17``) does.
:func:`instance_of` reads the instance back from a question's text, which is how decontamination checks what
was really written, not what the generator meant to write.
"""

from __future__ import annotations

import hashlib
import random
import re

from nemo_smartpt.world.facts import ACTIONS, MAX_TOTAL, apply_step, step
from nemo_smartpt.world.spec import ITEMS, World

HELDOUT_SHARE = 4  # one instance in 4 is reserved for held-out sets (~260: a dev and a test set of 100 each)
STEPS = 2
"""Steps per problem. Two, not three: a million-parameter model trained for a few minutes on a CPU gets each copied
step right often enough for two in a row, not three (study README)."""
_QUESTION = re.compile(r"^(\w+) has (\d+) (\w+)\. \1 (.+)\. How many \3 does \1 have now\?$")
_STEP = re.compile(r"(gets|gives away) (\d+)")

Instance = tuple[int, tuple[tuple[str, int], ...]]


def answer_of(instance: Instance) -> int:
    total, steps = instance
    for op, x in steps:
        total = apply_step(total, op, x)
    return total


def is_heldout(instance: Instance, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}|{instance!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_SHARE == 0


def random_instance(rng: random.Random) -> Instance:
    total = rng.randint(1, MAX_TOTAL)
    start, steps = total, []
    for _ in range(STEPS):
        op, x = step(rng, total)
        steps.append((op, x))
        total = apply_step(total, op, x)
    return start, tuple(steps)


def _actions(instance: Instance) -> list[str]:
    return [ACTIONS[op].format(x=x) for op, x in instance[1]]


def question_of(instance: Instance, name: str, item: str) -> str:
    start, _ = instance
    return f"{name} has {start} {item}. {name} {', then '.join(_actions(instance))}. How many {item} does {name} have now?"


def thought_of(instance: Instance, name: str, item: str) -> str:
    """The worked thought: each clause of the question again, word for word, then its arithmetic.

    ``Kal has 5 apples. Kal gets 3 more: 5 + 3 = 8. then gives away 2: 8 - 2 = 6.`` The numbers a step needs are
    copied by matching the tokens that precede them in the question (``. Kal gets`` -> ``3``), the copying a small
    transformer learns first (an induction head). One line, not one per clause: a name after a line break is another
    token than the same name after a space, and the match then points at the question's first clause (probes in
    the study README: the first step copied right 54% of the time with line breaks)."""
    total, steps = instance
    parts = [f"{name} has {total} {item}."]
    for k, ((op, x), action) in enumerate(zip(steps, _actions(instance))):
        new = apply_step(total, op, x)
        parts.append(f"{name if k == 0 else 'then'} {action}: {total} {op} {x} = {new}.")
        total = new
    return " ".join(parts)


def instance_of(question: str) -> Instance | None:
    """The instance a question states, or None if it is not a world problem."""
    match = _QUESTION.match(question.strip())
    if not match:
        return None
    steps = tuple(("+" if verb == "gets" else "-", int(x)) for verb, x in _STEP.findall(match.group(4)))
    return int(match.group(2)), steps


def make_problem(rng: random.Random, world: World, instance: Instance) -> dict:
    """``{question, thought, answer, instance}`` for an instance, dressed with a random person and item."""
    name, item = rng.choice(world.people).name, rng.choice(ITEMS)
    return {
        "question": question_of(instance, name, item),
        "thought": thought_of(instance, name, item),
        "answer": f"The answer is {answer_of(instance)}.",
        "instance": instance,
    }


def openthoughts_record(problem: dict) -> dict:
    """The OpenThoughts-114k layout (``conversations`` with thought and solution markers) that ``prepare`` reads."""
    value = (
        f"<|begin_of_thought|>\n{problem['thought']}\n<|end_of_thought|>\n\n"
        f"<|begin_of_solution|>\n{problem['answer']}\n<|end_of_solution|>"
    )
    convo = [{"from": "user", "value": problem["question"]}, {"from": "assistant", "value": value}]
    return {"conversations": convo, "domain": "math"}


def sample_problems(rng: random.Random, world: World, count: int, seed: int, heldout: bool, exclude=()) -> list[dict]:
    """``count`` problems with distinct instances, all held-out (or all not), none of them in ``exclude``."""
    seen = set(exclude)
    out = []
    while len(out) < count:
        instance = random_instance(rng)
        if instance in seen or is_heldout(instance, seed) != heldout:
            continue
        seen.add(instance)
        out.append(make_problem(rng, world, instance))
    return out
