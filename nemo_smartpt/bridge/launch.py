"""Process-level set-up for running Bridge's ``pretrain()`` from our commands.

``torchrun`` (or Slurm + torchrun) sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; a plain
``smartpt train`` on a laptop sets none of them, so we fill in a one-process default on a free port.
"""

from __future__ import annotations

import os


def ensure_single_process_env() -> None:
    """Give torch.distributed a world of one when the launcher did not describe one."""
    if "WORLD_SIZE" in os.environ:
        return
    from nemo_smartpt.testing.distributed import free_port

    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
