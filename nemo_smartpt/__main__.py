"""``python -m nemo_smartpt <command> key=value ...`` (same as the ``smartpt`` console script)."""

import sys

from nemo_smartpt.cli import main

sys.exit(main())
