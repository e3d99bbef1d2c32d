"""CPU runtime: the shims megatron-core 0.19.2 and megatron-bridge 0.6.2 need where CUDA is absent.

Mental model: upstream code runs unmodified; every place that hard-codes CUDA is answered by one shim below, applied
by :func:`apply_cpu_runtime` only when ``torch.cuda.is_available()`` is False. On a GPU this module does nothing.
Each shim is a :class:`Shim` record naming the upstream file it answers and an *anchor*: a line of that file which
shows the hard-code is still there. ``tests/runtime/test_cpu_shims.py`` checks every anchor against the installed
packages, so an upgrade that moves or fixes a hard-code fails loudly instead of silently mis-patching.

What the shims do, in short:
- RNG: megatron's ``CudaRNGStatesTracker`` keeps per-region CUDA generator states; on CPU the tracker keeps CPU
  generator states instead, so tensor-parallel regions still draw from their own, per-rank streams.
- Devices: ``torch.cuda.current_device()`` answers ``torch.device("cpu")``, and a global ``TorchFunctionMode`` maps
  ``device="cuda"``, ``.cuda()``, ``.to("cuda")`` and ``pin_memory`` to the CPU and reports ``torch.cuda.*`` type
  strings, which megatron's optimizers check by string.
- Streams, events, synchronize, NVTX: inert objects.
- Bridge: two unguarded imports of GPU-only packages are loaded with the one offending line replaced, CUDA assertion
  is skipped with ``allow_no_cuda=True``, and ``compile_helpers`` (which runs ``make`` where the wheel has no Makefile)
  is replaced by a check that the wheel's compiled helpers import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

from nemo_smartpt.runtime.cpu_shims import SHIMS, Shim, ShimError, shim_anchor_report  # noqa: F401 (re-exported)

_LOCK = threading.Lock()
_APPLIED = False
_MODE: TorchFunctionMode | None = None


# Lines of bridge modules replaced at import time (module -> (original line, replacement)).
_SOURCE_PATCHES: dict[str, tuple[str, str]] = {
    "megatron.bridge.peft.lora_layers": (
        "import transformer_engine.pytorch as te",
        "te = None  # nemo_smartpt CPU runtime: Transformer Engine is GPU-only",
    ),
    "megatron.bridge.training.pretrain": (
        "from nvidia_resiliency_ext.inprocess import CallWrapper",
        "CallWrapper = object  # nemo_smartpt CPU runtime: nvidia-resiliency-ext is not installed",
    ),
}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def apply_cpu_runtime() -> bool:
    """Apply every CPU shim once, before megatron is imported. Returns True if the shims are active.

    A no-op on machines with CUDA. Safe to call many times and from any entry point.
    """
    global _APPLIED
    if cuda_available():
        return False
    with _LOCK:
        if _APPLIED:
            return True
        _patch_torch_cuda()
        _install_function_mode()
        sys.meta_path.insert(0, _PatchingFinder())
        _patch_if_imported()
        _APPLIED = True
    return True


def is_active() -> bool:
    return _APPLIED


# --------------------------------------------------------------------------------------------- torch.cuda surface


class _NullStream:
    """Stands in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None):
        return event if event is not None else _NullEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NullEvent(_NullStream):
    def record(self, stream=None):
        pass

    def elapsed_time(self, other):
        return 0.0


def _noop(*args, **kwargs):
    return None


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = _noop
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.set_stream = _noop
    # Checkpoints store a "cuda" RNG state; on CPU the CPU generator is the one that matters.
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda.empty_cache = _noop
    cuda.memory_allocated = lambda device=None: 0
    cuda.max_memory_allocated = lambda device=None: 0
    cuda.reset_peak_memory_stats = _noop
    cuda.memory_stats = lambda device=None: dict.fromkeys(
        ("allocated_bytes.all.current", "reserved_bytes.all.current"), 0
    )
    for name in ("range_push", "range_pop", "mark"):
        setattr(cuda.nvtx, name, _noop)
    cuda.nvtx.range = lambda *args, **kwargs: contextlib.nullcontext()


# ------------------------------------------------------------------------------------ the device-mapping function mode

_CPU = torch.device("cpu")


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # torch treats a bare int device as a CUDA ordinal.
    return isinstance(device, int) and not isinstance(device, bool)


def _map(value):
    return _CPU if _is_cuda(value) else value


_TYPE_STRINGS = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
}


class CudaToCpuMode(TorchFunctionMode):
    """Maps every request for a CUDA tensor to the CPU and reports CUDA type strings for float tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _TYPE_STRINGS.get(args[0].dtype) or func(*args)
        if "device" in kwargs:
            kwargs["device"] = _map(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinned host memory means nothing without a device
        if func is torch.Tensor.to or func is torch.Tensor.new_empty:
            args = tuple(_map(a) if isinstance(a, (str, torch.device)) else a for a in args)
        return func(*args, **kwargs)


def _install_function_mode() -> None:
    global _MODE
    _MODE = CudaToCpuMode()
    # Entered for the life of the process: upstream code creates CUDA tensors everywhere, not in one scope.
    _MODE.__enter__()


# ---------------------------------------------------------------------------------------------- the CPU RNG tracker


def _cpu_tracker_class(base: type) -> type:
    """A subclass of megatron's CudaRNGStatesTracker whose named states are CPU generator states."""

    class CpuRNGStatesTracker(base):
        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            current = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(current)

        @contextlib.contextmanager
        def fork(self, name="model-parallel-rng"):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            current = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(current)

    return CpuRNGStatesTracker


# --------------------------------------------------------------------------------------- module patches at import time


def _patch_megatron_random(module) -> None:
    if getattr(module.CudaRNGStatesTracker, "_smartpt_cpu", False):
        return
    tracker = _cpu_tracker_class(module.CudaRNGStatesTracker)
    tracker._smartpt_cpu = True
    # initialize_rng_tracker() looks the class up by module-global name, so replacing it is enough.
    module.CudaRNGStatesTracker = tracker
    module.initialize_rng_tracker(force_reset=True)


def _patch_bridge_initialize(module) -> None:
    original = module.initialize_megatron
    if getattr(original, "_smartpt_cpu", False):
        return

    @functools.wraps(original)
    def initialize_megatron(*args, **kwargs):
        kwargs["allow_no_cuda"] = True
        return original(*args, **kwargs)

    initialize_megatron._smartpt_cpu = True
    module.initialize_megatron = initialize_megatron

    set_random_seed = module._set_random_seed

    @functools.wraps(set_random_seed)
    def _set_random_seed(
        seed_,
        data_parallel_random_init=False,
        te_rng_tracker=False,
        inference_rng_tracker=False,
        use_cudagraphable_rng=False,
        *,
        pg_collection,
    ):
        set_random_seed(
            seed_,
            data_parallel_random_init,
            te_rng_tracker,
            inference_rng_tracker,
            use_cudagraphable_rng,
            pg_collection=pg_collection,
        )
        from megatron.core import tensor_parallel
        from megatron.core.utils import get_pg_rank

        # Same seed arithmetic as upstream (pipeline stages differ by 100); then the tracker states it skipped.
        pp_rank = torch.distributed.get_group_rank(pg_collection.pp, torch.distributed.get_rank())
        tensor_parallel.model_parallel_cuda_manual_seed(
            seed_ + 100 * pp_rank,
            te_rng_tracker,
            inference_rng_tracker,
            use_cudagraphable_rng,
            tp_rank=get_pg_rank(pg_collection.tp),
            ep_rank=get_pg_rank(pg_collection.ep),
            etp_rank=get_pg_rank(pg_collection.expt_tp),
        )

    module._set_random_seed = _set_random_seed
    module.compile_helpers = _check_compiled_helpers


def _patch_bridge_setup(module) -> None:
    from megatron.bridge.training import initialize

    module.initialize_megatron = initialize.initialize_megatron


def _check_compiled_helpers() -> None:
    """Replaces ``compile_helpers``: the megatron-core wheel ships ``helpers_cpp``; make sure it imports."""
    from megatron.core.datasets import helpers_cpp  # noqa: F401


def _patch_hybrid_block(module) -> None:
    """HybridStack's final norm: megatron's torch norm (LayerNorm or RMSNorm per the config) where TE is absent."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    if HAVE_TE:
        return
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    def torch_norm(config, hidden_size: int, eps: float = 1e-5):
        return WrappedTorchNorm(config=config, hidden_size=hidden_size, eps=eps)

    module.TENorm = torch_norm


_POST_IMPORT: dict[str, Callable] = {
    "megatron.core.models.hybrid.hybrid_block": _patch_hybrid_block,
    "megatron.core.tensor_parallel.random": _patch_megatron_random,
    "megatron.bridge.training.initialize": _patch_bridge_initialize,
    "megatron.bridge.training.setup": _patch_bridge_setup,
}


def _patch_if_imported() -> None:
    for name, patch in _POST_IMPORT.items():
        if name in sys.modules:
            patch(sys.modules[name])
    for name in _SOURCE_PATCHES:
        if name in sys.modules:
            raise ShimError(
                f"{name} was imported before apply_cpu_runtime(); call it before importing megatron.bridge"
            )


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner, name: str):
        self.inner = inner
        self.name = name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        if self.name in _SOURCE_PATCHES:
            original, replacement = _SOURCE_PATCHES[self.name]
            source = self.inner.get_source(self.name)
            if original not in source:
                raise ShimError(f"{module.__file__}: expected line {original!r} not found; revisit the CPU shim")
            code = compile(source.replace(original, replacement, 1), module.__file__, "exec")
            exec(code, module.__dict__)
        else:
            self.inner.exec_module(module)
        if self.name in _POST_IMPORT:
            _POST_IMPORT[self.name](module)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Loads the few upstream modules we must patch through :class:`_PatchingLoader`; all others pass through."""

    _names = frozenset(_SOURCE_PATCHES) | frozenset(_POST_IMPORT)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._names:
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _PatchingFinder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None
