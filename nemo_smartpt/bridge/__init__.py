"""Glue to Megatron-Bridge: recipes for CPU and cluster, dataset providers, forward steps, callbacks, ``smartpt train``.

Everything that imports ``megatron.bridge`` lives here (or is imported lazily from here), so the pure-logic
subpackages stay importable without the NVIDIA stack. The Python API for a user's own recipe is
:func:`add_smartpt` (:mod:`nemo_smartpt.bridge.api`); ``smartpt train`` calls it too.
"""

from nemo_smartpt.bridge.train_config import DataConfig, EvalConfig, ResumeConfig, ScheduleConfig, TrainConfig
from nemo_smartpt.rlp.config import RLPConfig


def add_smartpt(config, settings=None, **kwargs):
    """See :func:`nemo_smartpt.bridge.api.add_smartpt` (imported lazily: it needs Megatron-Bridge)."""
    from nemo_smartpt.bridge.api import add_smartpt as _add_smartpt

    return _add_smartpt(config, settings, **kwargs)


__all__ = ["DataConfig", "EvalConfig", "RLPConfig", "ResumeConfig", "ScheduleConfig", "TrainConfig", "add_smartpt"]
