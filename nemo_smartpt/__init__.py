"""nemo_smartpt: three pretraining levers for Megatron-Core / NeMo Megatron-Bridge.

- ``nemo_smartpt.blend``: quality- and epoch-aware blend planning and a multi-phase blended dataset (curriculum).
- ``nemo_smartpt.reasoning``: reasoning data preparation, selection, injection and the pretraining/SFT split.
- ``nemo_smartpt.rlp``: RLP, reinforcement learning as a pretraining objective (information-gain reward).
- ``nemo_smartpt.bridge``: the glue to Megatron-Bridge's ``pretrain()`` (dataset providers, forward steps, callbacks).
- ``nemo_smartpt.runtime``: the CPU shims that let megatron-core / megatron-bridge run without CUDA.

Importing this package imports no Megatron code; pure-logic modules stay importable without the NVIDIA stack.
"""

__version__ = "0.1.0"
