"""A ``smartpt train`` run directory -> (Megatron model with the latest checkpoint's weights, its tokenizer).

The model is rebuilt from the checkpoint's own ``run_config.yaml`` and its weights loaded by Megatron-Bridge
(``megatron.bridge.training.model_load_save``), the same loader Bridge's checkpoint converters use; the tokenizer is
the one recorded in the run's ``smartpt_config.json`` (``data.tokenizer``). In one process (TP=1) Bridge sets up and
tears down a temporary gloo group; under ``torchrun`` with ``tensor_parallel=N`` the model-parallel groups are
initialised here and every rank loads its shard.
"""

from __future__ import annotations

import json
from pathlib import Path

from nemo_smartpt.evaluation.errors import EvaluationError


def latest_checkpoint(run_dir: str | Path) -> Path:
    """``<run>/checkpoints/iter_NNNNNNN`` of the latest saved iteration (Bridge's tracker file)."""
    root = Path(run_dir) / "checkpoints"
    tracker = root / "latest_checkpointed_iteration.txt"
    if not tracker.exists():
        raise EvaluationError(f"{run_dir}: no checkpoint ({tracker} is missing); train with checkpoint.save set")
    iteration = int(tracker.read_text().strip())
    path = root / f"iter_{iteration:07d}"
    if not path.is_dir():
        raise EvaluationError(f"{tracker} names iteration {iteration} but {path} does not exist")
    return path


def run_tokenizer(run_dir: str | Path):
    from nemo_smartpt.reasoning.tokenizer import load_tokenizer

    config = Path(run_dir) / "smartpt_config.json"
    if not config.exists():
        raise EvaluationError(f"{run_dir}: not a smartpt train run directory ({config.name} is missing)")
    return load_tokenizer(json.loads(config.read_text())["data"]["tokenizer"])


def load_run(run_dir: str | Path, tensor_parallel: int = 1):
    """``([model], tokenizer)`` of the run's latest checkpoint, in eval mode."""
    import torch

    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    from megatron.bridge.training.model_load_save import load_megatron_model

    checkpoint = latest_checkpoint(run_dir)
    tokenizer = run_tokenizer(run_dir)
    on_gpu = torch.cuda.is_available()
    # Bridge's loader would set up a temporary process group and tear megatron's parallel state down after loading;
    # the forward passes of the evaluation need that state, so it is set up here and kept for the process's life.
    _init_model_parallel(tensor_parallel)
    model = load_megatron_model(
        str(checkpoint),
        use_cpu_init=not on_gpu,
        skip_temp_dist_context=True,
        mp_overrides={"tensor_model_parallel_size": tensor_parallel},
    )
    model = model if isinstance(model, list) else [model]
    for module in model:
        module.eval()
    return model, tokenizer


def _init_model_parallel(tensor_parallel: int) -> None:
    import os
    import tempfile

    import torch
    from megatron.core import parallel_state
    from megatron.core import tensor_parallel as mcore_tp

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ:  # torchrun
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            torch.distributed.init_process_group(backend)
        elif tensor_parallel == 1:  # one process: a file store needs no free port
            store = tempfile.NamedTemporaryFile(prefix="smartpt-eval-", delete=False).name
            torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
        else:
            raise EvaluationError(
                f"tensor_parallel={tensor_parallel} needs torchrun --nproc-per-node={tensor_parallel}"
            )
    if torch.distributed.get_world_size() != tensor_parallel:
        raise EvaluationError(
            f"tensor_parallel={tensor_parallel} but {torch.distributed.get_world_size()} processes (data-parallel "
            "evaluation is not supported: run one process per tensor-parallel rank)"
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
        mcore_tp.model_parallel_cuda_manual_seed(1234)
