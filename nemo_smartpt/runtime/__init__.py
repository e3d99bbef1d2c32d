"""Runtime support: the CPU shims (:mod:`nemo_smartpt.runtime.cpu`) and small Megatron setup helpers.

Call :func:`apply_cpu_runtime` before importing megatron anywhere that may run without CUDA; it does nothing on a GPU.
"""

from nemo_smartpt.runtime.cpu import SHIMS, ShimError, apply_cpu_runtime, is_active

__all__ = ["SHIMS", "ShimError", "apply_cpu_runtime", "is_active"]
