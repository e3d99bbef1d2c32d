"""Process-level set-up for running Bridge's ``pretrain()`` from our commands.

``torchrun`` (or Slurm + torchrun) sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; a plain
``smartpt train`` on a laptop sets none of them, so we fill in a one-process default.
"""

from __future__ import annotations

import os


def ensure_single_process_env() -> None:
    """Give torch.distributed a world of one when the launcher did not describe one."""
    if "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        # Port 0: rank 0's rendezvous store binds a port the OS assigns as it binds, and in a world of one no other
        # process has to find it. A port picked free beforehand (bound, released, bound again seconds later after
        # the imports) could be taken in between by any other process on the machine.
        MASTER_PORT="0",
    )
