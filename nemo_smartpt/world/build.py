"""Build the world into one directory: raw jsonl, tokenizer, Megatron indexed datasets, catalog and lm-eval tasks.

``ensure_world(dir)`` is what ``smartpt demo`` and the study call; a user gets the same with::

    python -m nemo_smartpt.world.build out=runs/world          # then: smartpt train data.catalog=runs/world/catalog.yaml
                                                               #       data.tokenizer=runs/world/tokenizer ...

Layout::

    raw/<source>.jsonl        text sources ({"text"}) and reasoning.jsonl (OpenThoughts layout)
    eval/knowledge_{test,dev}.jsonl  eval/reasoning_{test,dev}.jsonl
    tokenizer/                the world's BPE (Hugging Face directory)
    indexed/<source>.bin/.idx written by ``smartpt prepare``'s own code with that tokenizer (reasoning: + SFT split)
    catalog.yaml              tier, category and epoch cap of each source
    tasks/<task>.yaml         conf/tasks/*.yaml with absolute data paths (lm-eval ``include_path``)
    world.json                the spec and version; written last, so a finished directory is recognised and reused
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from nemo_smartpt.overrides import OverrideError
from nemo_smartpt.reasoning.render import normalise_markers
from nemo_smartpt.world.facts import INLINE_THOUGHT_SOURCES, SOURCES, think_before_a_token
from nemo_smartpt.world.heldout import knowledge_items, reasoning_items
from nemo_smartpt.world.problems import instance_of, openthoughts_record, sample_problems
from nemo_smartpt.world.spec import ATTRIBUTES, WORLD_VERSION, WorldSpec, make_world
from nemo_smartpt.world.tokenizer import train_tokenizer

TASKS_DIR = Path(__file__).resolve().parents[2] / "conf" / "tasks"
MAX_EPOCHS = {
    "crawl_high": 6,
    "crawl_medium_high": 4,
    "crawl_medium": 2,
    "crawl_medium_low": 1,
    "crawl_low": 1,
    "math": 8,
    "code": 8,
    "wiki": 8,
    "reasoning": 8,
}
"""Epoch caps: small clean sources may repeat, noisy crawl may not (the pattern of arXiv 2412.15285)."""
SFT_FRACTION = 0.25
REASONING_SHARE = 0.2
"""Front-loaded reasoning at the paper's 80/20 mix (arXiv 2510.03264), in every phase. The paper's revision puts it in
the last 40% of training only; in the world that gave a model 2.1 passes over the problems in 380 steps and ~0.1 on
held-out problems, against 0.67 with the same share in both phases (4.9 passes; probes, study README, round 3)."""
WORLD_TASKS = ("world_knowledge", "world_reasoning")
"""The reported tasks; ``*_dev`` twins exist for design decisions."""


def write_raw(out: Path, spec: WorldSpec) -> dict[str, Path]:
    """Raw training jsonl per source and the held-out sets; returns source name -> path."""
    world = make_world(spec)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (make, _, _) in SOURCES.items():
        rng = random.Random(f"world-{spec.seed}-{name}")
        # Its own stream, so that the documents themselves are the same whatever the share of inline thoughts.
        thinker = random.Random(f"world-{spec.seed}-{name}-thoughts")
        rate = spec.inline_thoughts if name in INLINE_THOUGHT_SOURCES else 0.0
        documents = _documents(make, rng, world, getattr(spec, name), thinker, rate)
        paths[name] = _write_jsonl(out / "raw" / f"{name}.jsonl", ({"text": text} for text in documents))
    rng = random.Random(f"world-{spec.seed}-reasoning")
    problems = sample_problems(rng, world, spec.reasoning, spec.seed, heldout=False)
    paths["reasoning"] = _write_jsonl(out / "raw" / "reasoning.jsonl", map(openthoughts_record, problems))
    for split in ("test", "dev", "recall_dev"):
        _write_jsonl(out / "eval" / f"knowledge_{split}.jsonl", knowledge_items(world, split))
    dev = reasoning_items(world, spec, "dev")
    _write_jsonl(out / "eval" / "reasoning_dev.jsonl", dev)
    dev_instances = {instance_of(item["question"]) for item in dev}
    _write_jsonl(out / "eval" / "reasoning_test.jsonl", reasoning_items(world, spec, "test", exclude=dev_instances))
    return paths


def _documents(make, rng: random.Random, world, count: int, thinker: random.Random, rate: float):
    """``count`` documents of one source; each thinks once before a token with probability ``rate``."""
    for _ in range(count):
        text = make(rng, world)
        yield think_before_a_token(thinker, text) if thinker.random() < rate else text


def training_texts(paths: dict[str, Path]):
    """Every training document as text (reasoning rendered as ``prepare`` renders it), for the tokenizer."""
    for name, path in paths.items():
        with path.open() as handle:
            for line in handle:
                record = json.loads(line)
                if name != "reasoning":
                    yield record["text"]
                else:
                    question, value = (turn["value"] for turn in record["conversations"])
                    yield f"{question}\n\n{normalise_markers(value)}"


GLOSSARY_REPEATS = 200
"""How often the tokenizer's training sees the world's glossary (every name and attribute value)."""


def tokenizer_texts(paths: dict[str, Path], spec: WorldSpec):
    """The tokenizer's training text: every training document, then the glossary of the world's names and values.

    With 24 people each name occurs a few hundred times in the corpus, too rarely for BPE to merge all of them into
    one or two tokens (some came out at four); a name split into four pieces is four facts' worth of learning for a
    small model. The glossary makes every name and value frequent for the tokenizer only: it is not training data
    of the model and holds no fact (no name is paired with a value)."""
    yield from training_texts(paths)
    world = make_world(spec)
    words = [p.name for p in world.people] + [v for a in ATTRIBUTES for v in world.candidates(a)]
    glossary = "".join(f" {w}" for w in words)
    for _ in range(GLOSSARY_REPEATS):
        yield glossary


def write_tasks(out: Path, templates: Path = TASKS_DIR) -> Path:
    """``templates/*.yaml`` with ``data_files`` made absolute under ``out``, into ``out/tasks``: an lm-eval
    ``include_path``."""
    tasks = out / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for source in sorted(templates.glob("*.yaml")):
        tree = yaml.safe_load(source.read_text())
        files = tree["dataset_kwargs"]["data_files"]
        tree["dataset_kwargs"]["data_files"] = {k: str((out / v).resolve()) for k, v in files.items()}
        (tasks / source.name).write_text(
            f"# written by nemo_smartpt.world.build from {source.name}\n" + yaml.safe_dump(tree, sort_keys=False)
        )
    return tasks


class WorldDirError(OverrideError):
    """The world directory holds files that no world build wrote (one line from the CLI, like a bad override)."""


def ensure_world(directory: str | Path, spec: WorldSpec | None = None, quiet: bool = True) -> Path:
    """Build (once) the world under ``directory``; return its ``catalog.yaml``. A finished directory with the same
    spec and version is reused as it is; one built by another version or spec (``world.json`` differs) is rebuilt in
    place, so that ``make demo`` after an upgrade works; a directory with data but no ``world.json`` is refused."""
    from nemo_smartpt.reasoning.config import PrepareConfig
    from nemo_smartpt.reasoning.prepare import prepare
    from nemo_smartpt.reasoning.split import SplitConfig

    spec = spec or WorldSpec()
    out = Path(directory)
    stamp = out / "world.json"
    wanted = {"spec": asdict(spec), "version": WORLD_VERSION}
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return out / "catalog.yaml"
        except ValueError:
            pass  # a stamp cut short: an interrupted build of ours, rebuilt below
    elif any((out / part).exists() for part in ("raw", "indexed", "tokenizer")):
        raise WorldDirError(
            f"{out} holds raw/, indexed/ or tokenizer/ but no world.json, so no world build wrote them; choose "
            "another world directory or remove that one"
        )
    # The directory is ours from here on: an older version's or another spec's world (or a build that stopped
    # half-way, which leaves this stamp) is replaced file by file, the prepared datasets included.
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"building": wanted}, indent=2))
    paths = write_raw(out, spec)
    tokenizer = train_tokenizer(tokenizer_texts(paths, spec), out / "tokenizer", spec.tokenizer_vocab)
    sources = []
    for name, path in paths.items():
        prefix = out / "indexed" / name
        prefix.parent.mkdir(parents=True, exist_ok=True)
        reasoning = name == "reasoning"
        prepare(
            PrepareConfig(
                input=str(path),
                output_prefix=str(prefix),
                format="openthoughts" if reasoning else "text",
                tokenizer=str(tokenizer),
                progress=not quiet,
                # The data-matched split: a quarter of the reasoning questions go to SFT, disjoint from pretraining.
                split=SplitConfig(sft_fraction=SFT_FRACTION if reasoning else 0.0),
                overwrite=True,  # the previous world's dataset under this prefix (the stamp above says it is ours)
            )
        )
        _, quality, category = SOURCES.get(name, (None, "high", "reasoning"))
        entry = {"name": name, "prefix": f"indexed/{name}", "quality": quality, "category": category}
        entry["max_epochs"] = MAX_EPOCHS[name]
        if reasoning:
            entry["target_share"] = REASONING_SHARE
        sources.append(entry)
    header = (
        "# The world of nemo_smartpt (nemo_smartpt/world): generated from a seed, tokenized with its own BPE\n"
        f"# ({out / 'tokenizer'}). Train on it with data.catalog=<this file> data.tokenizer=<world>/tokenizer.\n"
    )
    (out / "catalog.yaml").write_text(header + yaml.safe_dump({"sources": sources}, sort_keys=False))
    write_tasks(out)
    stamp.write_text(json.dumps(wanted, indent=2))
    return out / "catalog.yaml"


def _write_jsonl(path: Path, records) -> Path:
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


@dataclass
class BuildConfig:
    """``python -m nemo_smartpt.world.build``: write the world (its sizes: ``spec.*``)."""

    out: str = "runs/world"
    """Directory to build the world into."""
    spec: WorldSpec = field(default_factory=WorldSpec)
    """Sizes and seed."""


def main(args: list[str]) -> int:
    from nemo_smartpt.overrides import build_config, describe

    if "--help" in args or "-h" in args:
        print("usage: python -m nemo_smartpt.world.build [key=value ...]\n\n" + describe(BuildConfig))
        return 0
    cfg = build_config(BuildConfig, args)
    catalog = ensure_world(cfg.out, cfg.spec, quiet=False)
    print(f"world: {catalog} (tokenizer {Path(cfg.out) / 'tokenizer'}, lm-eval tasks {Path(cfg.out) / 'tasks'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
