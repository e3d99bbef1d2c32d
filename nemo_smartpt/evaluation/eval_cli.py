"""``smartpt eval``: score a ``smartpt train`` run's latest checkpoint with lm-evaluation-harness.

    smartpt eval run_dir=runs/demo                                   # the world's tasks, writes runs/demo/eval.json
    smartpt eval run_dir=runs/x "tasks=[world_knowledge]" limit=50 out=/tmp/k.json
    torchrun --nproc-per-node=2 -m nemo_smartpt eval run_dir=runs/big tensor_parallel=2

The output is lm-eval's results JSON (``results`` with each metric and its ``_stderr``, ``n-samples``, ``configs``,
``versions``) plus ``checkpoint`` and ``seconds``. Tasks come from ``include_path`` (task YAMLs over local jsonl;
default: the ``tasks/`` folder next to the run's catalog, which the world writes); names not found there are looked
up among lm-eval's built-in tasks, whose datasets must then be in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nemo_smartpt.overrides import build_config, describe


@dataclass
class EvalCLIConfig:
    """Settings of ``smartpt eval``."""

    run_dir: str = ""
    """A ``smartpt train`` run directory (its latest checkpoint and tokenizer are used)."""
    tasks: list[str] = field(default_factory=lambda: ["world_knowledge", "world_reasoning"])
    """lm-eval task names."""
    include_path: str = ""
    """Folder of task YAMLs; empty = ``tasks/`` beside the run's catalog (the world's)."""
    out: str = ""
    """Results JSON; empty = ``<run_dir>/eval.json``."""
    batch_size: int = 32
    """Requests per forward pass."""
    limit: int | None = None
    """Evaluate only the first N documents of each task (a quick look; not for reporting)."""
    tensor_parallel: int = 1
    """Tensor-parallel size to load the checkpoint with (run under torchrun with as many processes)."""
    seed: int = 1234
    """lm-eval's seeds (few-shot sampling, bootstrap)."""


def default_include_path(run_dir: str | Path) -> str:
    """``tasks/`` beside the catalog the run trained on, if it exists."""
    from nemo_smartpt.evaluation.harness import catalog_task_dir

    config = Path(run_dir) / "smartpt_config.json"
    if not config.exists():
        return ""
    data = json.loads(config.read_text())["data"]
    return catalog_task_dir(data["catalog"], data["bundled_dir"])


def main(args: list[str]) -> int:
    if "--help" in args or "-h" in args:
        print("usage: smartpt eval run_dir=DIR [key=value ...]\n\n" + describe(EvalCLIConfig))
        return 0
    cfg = build_config(EvalCLIConfig, args)
    from nemo_smartpt.evaluation.errors import EvaluationError

    if not cfg.run_dir:
        print("smartpt eval: run_dir=DIR is required (a smartpt train run directory)", file=sys.stderr)
        return 2
    try:
        return _run(cfg)
    except EvaluationError as exc:
        print(f"smartpt eval: {exc}", file=sys.stderr)
        return 2


def _run(cfg: EvalCLIConfig) -> int:
    import torch

    from nemo_smartpt.evaluation.checkpoint import latest_checkpoint
    from nemo_smartpt.evaluation.harness import evaluate, summary_line
    from nemo_smartpt.evaluation.lm import SmartptLM

    started = time.time()
    latest_checkpoint(cfg.run_dir)  # a missing checkpoint fails here, before megatron is imported
    include_path = cfg.include_path or default_include_path(cfg.run_dir)
    lm = SmartptLM(run_dir=cfg.run_dir, batch_size=cfg.batch_size, tensor_parallel=cfg.tensor_parallel)
    results = evaluate(lm, list(cfg.tasks), include_path or None, limit=cfg.limit, seed=cfg.seed)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    results["checkpoint"] = str(latest_checkpoint(cfg.run_dir))
    results["seconds"] = round(time.time() - started, 1)
    out = Path(cfg.out or Path(cfg.run_dir) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"smartpt eval: {summary_line(results)}")
    print(f"smartpt eval: wrote {out} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
