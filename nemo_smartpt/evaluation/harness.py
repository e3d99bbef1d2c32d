"""Run lm-evaluation-harness offline on local task YAMLs and return its results JSON.

``evaluate(lm, tasks, include_path)`` calls lm-eval's own ``simple_evaluate`` with a ``TaskManager`` that indexes
only ``include_path`` when every task is found there (the world's tasks), so no hub is reached and lm-eval's ~200
built-in task folders are not scanned; a name that is not local falls back to lm-eval's built-in tasks (which then
need their datasets cached locally). The returned dict is lm-eval's: ``results`` (per task ``metric,filter`` values
with ``..._stderr``), ``n-samples``, ``configs``, ``versions``, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nemo_smartpt.evaluation.errors import EvaluationError


def catalog_task_dir(catalog: str, bundled_dir: str) -> str:
    """The ``tasks/`` folder beside a catalog (or under the bundled corpus), where the world and the bundled corpus
    write their lm-eval task files; empty if there is none."""
    root = Path(bundled_dir) if catalog == "bundled" else Path(catalog).parent
    return str(root / "tasks") if (root / "tasks").is_dir() else ""


def local_task_names(include_path: str | Path) -> set[str]:
    import yaml

    names = set()
    for path in Path(include_path).glob("*.yaml"):
        tree = yaml.safe_load(path.read_text()) or {}
        if "task" in tree:
            names.add(str(tree["task"]))
    return names


def evaluate(
    lm, tasks: list[str], include_path: str | Path | None = None, limit: int | None = None, seed: int = 1234
) -> dict:
    """lm-eval results of ``lm`` on ``tasks`` (JSON-serialisable; samples not included)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local jsonl only: never reach the hub at run time
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    local = local_task_names(include_path) if include_path else set()
    if include_path and not Path(include_path).is_dir():
        raise EvaluationError(f"include_path {include_path}: no such directory")
    manager = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=not set(tasks) <= local
    )
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        log_samples=True,  # kept only as per-item scores (below), for intervals over items and seeds
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=1000,
    )
    if results is None:  # lm-eval returns None on non-zero ranks
        return {}
    samples = results.pop("samples", {})
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    results["per_item"] = per_item_scores(samples)
    results["examples"] = generation_examples(samples)
    return results


def generation_examples(samples: dict, count: int = 3) -> dict[str, list[dict]]:
    """The first ``count`` generations of each generation task (prompt, raw response, filtered answer, target)."""
    out = {}
    for task, rows in samples.items():
        rows = sorted(rows, key=lambda r: int(r["doc_id"]))[:count]
        if rows and isinstance(rows[0]["resps"][0][0], str):
            out[task] = [
                {
                    "prompt": r["arguments"][0][0],
                    "response": r["resps"][0][0],
                    "answer": r["filtered_resps"][0],
                    "target": r["target"],
                }
                for r in rows
            ]
    return out


def per_item_scores(samples: dict) -> dict[str, dict[str, list[float]]]:
    """``{task: {metric: [score of doc 0, doc 1, ...]}}`` from lm-eval's logged samples (the documents' own order),
    so that studies can put intervals over items (and seeds) without keeping every prompt and response."""
    out: dict[str, dict[str, list[float]]] = {}
    for task, rows in samples.items():
        metrics: dict[str, dict[int, float]] = {}
        for row in rows:
            for name in row.get("metrics", []):
                if isinstance(row.get(name), (int, float)):
                    metrics.setdefault(name, {})[int(row["doc_id"])] = float(row[name])
        out[task] = {name: [by_doc[i] for i in sorted(by_doc)] for name, by_doc in metrics.items()}
    return out


def summary_line(results: dict) -> str:
    """``task metric=value ± stderr`` for every reported metric (the filtered one for generation tasks)."""
    parts = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):  # "metric,filter" only
                continue
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            err = f" ± {stderr:.3f}" if isinstance(stderr, (int, float)) else ""
            parts.append(f"{task} {key.split(',')[0]}={value:.3f}{err}")
    return ", ".join(parts)
