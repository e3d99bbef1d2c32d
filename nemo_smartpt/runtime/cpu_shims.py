"""The CUDA hard-codes of megatron-core 0.19.2 and megatron-bridge 0.6.2 that the CPU runtime answers, one record each.

Each :class:`Shim` names the upstream module whose file holds the hard-code and an *anchor*, a line of that file which
shows the hard-code is still there; :func:`shim_anchor_report` checks every anchor against the installed packages
(``tests/runtime/test_cpu_shims.py``), so an upgrade that moves or fixes a hard-code fails loudly instead of silently
mis-patching. What answers each one lives in :mod:`nemo_smartpt.runtime.cpu`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


class ShimError(RuntimeError):
    """An upstream file no longer looks the way a shim expects (the pinned version changed)."""


@dataclass(frozen=True)
class Shim:
    """One answer to one CUDA hard-code.

    Attributes:
        name: short id used in logs and tests.
        module: the upstream module whose file holds the hard-code.
        anchor: text that must occur in that file (on one line) while the shim is needed.
        why: what fails on CPU without the shim.
    """

    name: str
    module: str
    anchor: str
    why: str


SHIMS: tuple[Shim, ...] = (
    Shim(
        "rng_tracker",
        "megatron.core.tensor_parallel.random",
        "orig_rng_state = torch.cuda.get_rng_state()",
        "CudaRNGStatesTracker.add/fork read and write CUDA generator states",
    ),
    Shim(
        "attention_rng_fork",
        "megatron.core.transformer.dot_product_attention",
        "with tensor_parallel.get_cuda_rng_tracker().fork():",
        "attention dropout always forks the tracker, so the tracker must work on CPU",
    ),
    Shim(
        "current_device",
        "megatron.core.utils",
        "device=torch.cuda.current_device(),",
        "buffers are allocated on torch.cuda.current_device() (GlobalMemoryBuffer and ~100 other places)",
    ),
    Shim(
        "cuda_tensor_creation",
        "megatron.core.pipeline_parallel.schedules",
        'total_num_tokens = torch.zeros([], dtype=torch.int, device="cuda")',
        'schedules create tensors with device="cuda"',
    ),
    Shim(
        "p2p_synchronize",
        "megatron.core.pipeline_parallel.p2p_communication",
        "torch.cuda.synchronize()",
        "batched p2p calls torch.cuda.synchronize()",
    ),
    Shim(
        "streams",
        "megatron.core.distributed.param_and_grad_buffer",
        "torch.cuda.current_stream()",
        "grad buffers record on torch.cuda.current_stream()",
    ),
    Shim(
        "memory_stats",
        "megatron.core.inference.engines.dynamic_engine",
        'start_mem_alloc = start_mem["allocated_bytes.all.current"]',
        "the dynamic inference engine's suspend/resume logs torch.cuda.memory_stats() keys, empty without CUDA",
    ),
    Shim(
        "type_strings",
        "megatron.core.optimizer.clip_grads",
        "assert param.grad.type() == 'torch.cuda.FloatTensor'",
        "gradient clipping and the distributed optimizer check tensor type strings",
    ),
    Shim(
        "nvtx",
        "megatron.core.utils",
        "torch.cuda.nvtx.range_push(msg)",
        "torch.cuda.nvtx raises 'NVTX functions not installed' without CUDA",
    ),
    Shim(
        "hybrid_final_norm",
        "megatron.core.models.hybrid.hybrid_block",
        "self.final_norm = TENorm(",
        "HybridStack builds its final norm with Transformer Engine's TENorm whatever the layer spec, and TENorm "
        "raises without TE: attention/MLP hybrid patterns could not run on CPU",
    ),
    Shim(
        "bridge_lora_te_import",
        "megatron.bridge.peft.lora_layers",
        "import transformer_engine.pytorch as te",
        "unguarded Transformer Engine import, reached by `import megatron.bridge`",
    ),
    Shim(
        "bridge_resiliency_import",
        "megatron.bridge.training.pretrain",
        "from nvidia_resiliency_ext.inprocess import CallWrapper",
        "unguarded nvidia-resiliency-ext import in pretrain()",
    ),
    Shim(
        "bridge_allow_no_cuda",
        "megatron.bridge.training.initialize",
        'assert torch.cuda.is_available(), "Megatron requires CUDA."',
        "initialize_megatron asserts CUDA unless allow_no_cuda=True",
    ),
    Shim(
        "bridge_seed_gated_on_cuda",
        "megatron.bridge.training.initialize",
        "if torch.cuda.device_count() > 0:",
        "_set_random_seed adds the tensor-parallel RNG states only when a GPU is counted",
    ),
    Shim(
        "bridge_compile_helpers",
        "megatron.bridge.training.initialize",
        "compile_helpers()",
        "compile_helpers runs `make`, but the wheel ships compiled helpers and no Makefile",
    ),
)


def shim_anchor_report() -> list[tuple[Shim, str, bool]]:
    """For each shim: the upstream file and whether its anchor line is still there (used by the tests)."""
    rows = []
    for shim in SHIMS:
        spec = importlib.util.find_spec(shim.module)
        if spec is None or spec.origin is None:
            rows.append((shim, "<not installed>", False))
            continue
        with open(spec.origin, encoding="utf-8") as handle:
            text = handle.read()
        rows.append((shim, spec.origin, shim.anchor in text))
    return rows
