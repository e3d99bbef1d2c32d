"""The README is tested: every command of its ```bash blocks runs here as written, in README order.

Extraction (:func:`readme_commands`): each ```bash block of README.md, continuation lines joined, comments after the
command dropped. A command whose comment carries a mark is not run, and the mark says why:

- ``[cluster]``: needs a Slurm cluster, a container runtime or a GPU (sbatch, docker, enroot, the dynamic engine);
- ``[venv]``: builds the project's virtual environment (``make demo``/``make test``), which this test already runs in;
- ``[benchmark]``: a timed, minutes-long measurement (``benchmarks/``).

Everything else runs with ``bash -c`` in a scratch directory that looks like a user's checkout after setup: the
repository's ``conf/``, ``examples/`` and ``benchmarks/`` copied in, ``runs/bundled`` holding the bundled corpus (built
once per session), ``smartpt``/``python``/``torchrun`` of this interpreter first on ``PATH``. The README documents
``SMARTPT_MAX_STEPS``; the test sets it, so documented 200-step runs take a few steps (the only reduction). Commands
that need the user's own files name them in the README (``my_catalog.yaml``): the scratch directory provides them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKS = {
    "cluster": "needs a Slurm cluster, a container runtime or a GPU",
    "venv": "builds the virtual environment this test runs in",
    "benchmark": "a timed measurement of minutes; the benchmark scripts have their own toy-size tests",
}
# A command whose comment carries ``[refused]`` documents a refusal: it runs, and must fail in one ``smartpt`` line.
REFUSED = "refused"
MAX_STEPS = "2"  # SMARTPT_MAX_STEPS for every command (README: "Smoke-testing a command")

# What a command's output must show besides exiting 0, where the README makes a claim about it. The TP=2 line is
# also the project's only test of the default byte vocabulary padded for TP=2 under torchrun (8 x TP = 16).
EXPECT_OUTPUT = {
    "torchrun --nproc-per-node=2 -m nemo_smartpt train +experiment=volta model.tensor_model_parallel_size=2 "
    "out_dir=runs/volta_tp2": "padded vocab (size: 257) with 15 dummy tokens (new size: 272)",
}

# Commands that fail on this branch and are fixed on another; the lead removes an entry when merging that branch.
# Keyed by command, or (command, n) for its n-th occurrence in the README.
WAITING: dict = {}  # README commands waiting on unmerged work (none): each entry names its branch


def readme_commands(text: str) -> list[tuple[str, str | None]]:
    """``[(command, mark or None)]`` of every ```bash block, in order."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            command, comment = _split_comment(line)
            found = re.search(r"\[(\w+)\]", comment)
            mark = found.group(1) if found and found.group(1) in (*MARKS, REFUSED) else None
            commands.append((" ".join(command.split()), mark))
    return commands


def _split_comment(line: str) -> tuple[str, str]:
    """Split at the first ``#`` outside quotes that starts a word (``+key=a#b`` stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :]
    return line, ""


COMMANDS = readme_commands(README.read_text())
RUN = [c for c, mark in COMMANDS if mark in (None, REFUSED)]
EXPECT_REFUSAL = {c for c, mark in COMMANDS if mark == REFUSED}


def _occurrences(commands: list[str]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    out = []
    for command in commands:
        seen[command] = seen.get(command, 0) + 1
        out.append((command, seen[command]))
    return out


def _waiting(command: str, n: int) -> str | None:
    return WAITING.get((command, n)) or WAITING.get(command)


def test_extraction_finds_the_documented_paths_and_marks_the_cluster_ones():
    runs = " \n".join(RUN)
    marked = {c: m for c, m in COMMANDS if m}
    for needed in ("smartpt train +experiment=volta", "smartpt train +experiment=hopper", "--cfg job", "torchrun"):
        assert needed in runs, needed
    assert RUN.count("smartpt train +experiment=volta") == 2  # the same command twice: resume of a finished run
    assert "smartpt train +experiment=hopper" in RUN  # hopper at its defaults
    assert any(c.startswith("sbatch ") for c in marked) and any(c.startswith("docker ") for c in marked)
    assert all(m == "cluster" for c, m in marked.items() if c.split()[0] in ("sbatch", "docker", "enroot"))
    assert all(m in MARKS or m == REFUSED for m in marked.values())
    assert set(EXPECT_OUTPUT) <= set(RUN), set(EXPECT_OUTPUT) - set(RUN)  # a reworded command keeps its check
    keys = set(RUN) | set(_occurrences(RUN))
    assert set(WAITING) <= keys, set(WAITING) - keys  # a reworded README command must not stay skipped here


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bundled_data):
    """A user's checkout after setup: the README's relative paths, the bundled corpus, the user's own catalog."""
    home = tmp_path_factory.mktemp("readme")
    for part in ("conf", "examples", "benchmarks"):
        shutil.copytree(ROOT / part, home / part, ignore=shutil.ignore_patterns("__pycache__", "results"))
    (home / "runs").mkdir()
    (home / "runs" / "bundled").symlink_to(bundled_data)
    # "my_catalog.yaml": a user's catalog; here the bundled corpus's, with its prefixes made absolute.
    catalog = (Path(bundled_data) / "catalog.yaml").read_text()
    catalog = re.sub(r"(prefix: )(indexed/)", lambda m: m.group(1) + f"{bundled_data}/" + m.group(2), catalog)
    (home / "my_catalog.yaml").write_text(catalog)
    # `smartpt prepare`'s inputs: OpenThoughts records, two evaluation sets to decontaminate against, a tokenizer.
    data = ROOT / "tests" / "reasoning" / "data"
    (home / "data" / "openthoughts").mkdir(parents=True)
    shutil.copy(data / "openthoughts3.jsonl", home / "data" / "openthoughts" / "part-000.jsonl")
    shutil.copy(data / "openthoughts_114k.jsonl", home / "data" / "openthoughts" / "part-001.jsonl")
    (home / "evals").mkdir()
    shutil.copy(data / "eval_set.jsonl", home / "evals" / "gsm8k.jsonl")
    shutil.copy(data / "eval_set.jsonl", home / "evals" / "math500.jsonl")
    _write_tokenizer(home / "models" / "tokenizer")
    # The prepare safety and Curator examples: a user's text jsonl, an empty file, classifier-labelled documents.
    docs = [{"text": f"document {i} about the river and the mill, written once"} for i in range(40)]
    for name, rows in (("a.jsonl", docs), ("b.jsonl", docs[:20]), ("empty.jsonl", [])):
        (home / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels, buckets = ("High", "Medium", "Low"), ("3", "11", "18", "19")
    curated = [dict(d, quality_pred=labels[i % 3]) for i, d in enumerate(docs)]
    (home / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curated))
    ncc = [dict(d, bucket=buckets[i % 4]) for i, d in enumerate(docs)]
    (home / "ncc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ncc))
    return home


def _write_tokenizer(directory: Path) -> None:
    """A small byte-level BPE trained offline (HF ``tokenizers``), saved as ``tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory.mkdir(parents=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = (ROOT / "README.md").read_text().splitlines()
    tok.train_from_iterator(text, trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))


def _env(home: Path) -> dict[str, str]:
    # NEMORUN_HOME: NeMo-Run's experiment records stay in the scratch directory, not the user's ~/.nemo_run.
    env = dict(os.environ, PYTHONWARNINGS="ignore", SMARTPT_MAX_STEPS=MAX_STEPS, NEMORUN_HOME=str(home / ".nemo_run"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
@pytest.mark.parametrize(("command", "n"), _occurrences(RUN), ids=[f"{i:02d}" for i in range(len(RUN))])
def test_readme_command_runs_as_written(command, n, workspace):
    if _waiting(command, n):
        pytest.skip(_waiting(command, n))
    done = subprocess.run(
        ["bash", "-c", command], cwd=workspace, env=_env(workspace), capture_output=True, text=True, timeout=3600
    )
    output = done.stdout + done.stderr
    if command in EXPECT_REFUSAL:
        assert done.returncode != 0, f"$ {command}\n(documented as refused, but exited 0)\n{output[-4000:]}"
        assert any(line.startswith("smartpt ") for line in output.splitlines()), f"$ {command}\n{output[-4000:]}"
        assert "Traceback" not in output, f"$ {command}\n{output[-4000:]}"
        return
    assert done.returncode == 0, f"$ {command}\n{output[-4000:]}"
    assert "Traceback" not in output, f"$ {command}\n{output[-4000:]}"
    if command in EXPECT_OUTPUT:
        assert EXPECT_OUTPUT[command] in output, f"$ {command}\n(missing: {EXPECT_OUTPUT[command]})\n{output[-4000:]}"
