"""Console noise from Megatron-Bridge that looks like a failure on a CPU run, and what we do about each.

- ``megatron.bridge.peft.utils`` imports ``FP8GlobalStateManager`` with Bridge's ``safe_import_from``, which logs an
  INFO record holding a full traceback (``megatron.bridge.utils.import_utils``, through its own stream handler and the
  root's, so it prints twice) whenever Transformer Engine lacks that symbol, i.e. on every machine without TE. Bridge
  then simply runs without FP8. :func:`install_console_filters` drops that one record with a ``logging.Filter`` on
  that logger, before Bridge is imported; every other record of the logger passes.
- Bridge's ``training_log`` prints ``Step Time : ...s GPU utilization: 0.0MODEL_TFLOP/s/GPU`` with a plain
  ``print`` (``megatron/bridge/training/utils/train_utils.py``), which no logging filter can reach. On CPU the metrics
  callback says once what it means (the tiny model's FLOP rate rounds to 0.0) and its own progress line carries the
  smoothed samples/s and tokens/s.
"""

from __future__ import annotations

import logging

IMPORT_LOGGER = "megatron.bridge.utils.import_utils"
FP8_SYMBOL = "FP8GlobalStateManager"


class MissingFP8ManagerFilter(logging.Filter):
    """Drops Bridge's INFO traceback for the optional Transformer Engine FP8 state manager."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not (FP8_SYMBOL in message and message.startswith("Import of"))


def install_console_filters() -> None:
    """Install the filter on Bridge's import logger (idempotent; call before importing ``megatron.bridge``)."""
    logger = logging.getLogger(IMPORT_LOGGER)
    if not any(isinstance(f, MissingFP8ManagerFilter) for f in logger.filters):
        logger.addFilter(MissingFP8ManagerFilter())
