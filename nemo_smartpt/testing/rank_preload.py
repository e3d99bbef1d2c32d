"""Imported once by the forkserver that :func:`nemo_smartpt.testing.distributed.run_distributed` forks its ranks from.

Importing megatron-core and megatron-bridge takes ~20 s of CPU per process (transformers, wandb, every model bridge);
a spawned rank paid it on every ``run_distributed`` call, ~40 s of a 2-core machine for two ranks. The forkserver pays
it once per test process, with the CPU runtime applied first (as every entry point does), and each rank starts as a
fork of that server: a process that has imported the packages and run nothing else.

Nothing here may raise: a preload error would take the forkserver down with it. A failed import is retried (and
reported with its traceback) where the rank's own function imports the module.
"""

from __future__ import annotations

import importlib

# megatron.bridge.training.pretrain brings in megatron.core, transformers and the rest of what a rank's pretrain needs.
MODULES = ("megatron.core.parallel_state", "megatron.bridge.training.pretrain")

try:
    from nemo_smartpt.runtime import apply_cpu_runtime

    apply_cpu_runtime()
    for name in MODULES:
        importlib.import_module(name)
except BaseException:  # noqa: B036
    pass
