"""Multi-step word problems with worked thoughts (the world's reasoning data), and their instance keys.

A problem is an *instance* ``(start, ((op, x), ...))``: a start count and two or three ``+``/``-`` steps with
operands 1-5, running totals kept in [0, 20]. The person and the item only dress it. Held-out problems are the
instances whose keyed hash falls in :data:`HELDOUT_SHARE` of the hash space: no training problem ever has one, so a
held-out problem's number combination never occurs in training, while every single step (``12 + 5 = 17``) does.
:func:`instance_of` reads the instance back from a question's text, which is how decontamination checks what
was really written, not what the generator meant to write.
"""

from __future__ import annotations

import hashlib
import random
import re

from nemo_smartpt.world.facts import MAX_TOTAL, step
from nemo_smartpt.world.spec import World

ITEMS = ("apples", "coins", "books", "stamps", "shells", "marbles")
HELDOUT_SHARE = 8  # one instance in 8 is reserved for held-out sets
_VERB = {"+": "gets {x} more", "-": "gives away {x}"}
_QUESTION = re.compile(r"^(\w+) has (\d+) (\w+)\. \1 (.+)\. How many \3 does \1 have now\?$")
_STEP = re.compile(r"(gets|gives away) (\d+)")

Instance = tuple[int, tuple[tuple[str, int], ...]]


def answer_of(instance: Instance) -> int:
    total, steps = instance
    for op, x in steps:
        total = total + x if op == "+" else total - x
    return total


def is_heldout(instance: Instance, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}|{instance!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELDOUT_SHARE == 0


def random_instance(rng: random.Random) -> Instance:
    total = rng.randint(1, MAX_TOTAL)
    start, steps = total, []
    for _ in range(rng.randint(2, 3)):
        op, x = step(rng, total)
        steps.append((op, x))
        total = total + x if op == "+" else total - x
    return start, tuple(steps)


def question_of(instance: Instance, name: str, item: str) -> str:
    start, steps = instance
    actions = ", then ".join(_VERB[op].format(x=x) for op, x in steps)
    return f"{name} has {start} {item}. {name} {actions}. How many {item} does {name} have now?"


def thought_of(instance: Instance) -> str:
    total, steps = instance
    lines = [f"Start with {total}."]
    for op, x in steps:
        new = total + x if op == "+" else total - x
        lines.append(f"{total} {op} {x} = {new}.")
        total = new
    return "\n".join(lines)


def instance_of(question: str) -> Instance | None:
    """The instance a question states, or None if it is not a world problem."""
    match = _QUESTION.match(question.strip())
    if not match:
        return None
    steps = tuple(("+" if verb == "gets" else "-", int(x)) for verb, x in _STEP.findall(match.group(4)))
    return int(match.group(2)), steps


def make_problem(rng: random.Random, world: World, instance: Instance) -> dict:
    """``{question, thought, answer, instance}`` for an instance, dressed with a random person and item."""
    question = question_of(instance, rng.choice(world.people).name, rng.choice(ITEMS))
    return {
        "question": question,
        "thought": thought_of(instance),
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
