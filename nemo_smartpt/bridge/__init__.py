"""Glue to Megatron-Bridge: recipes for CPU and cluster, dataset providers, forward steps, callbacks, ``smartpt train``.

Everything that imports ``megatron.bridge`` lives here (or is imported lazily from here), so the pure-logic
subpackages stay importable without the NVIDIA stack.
"""
