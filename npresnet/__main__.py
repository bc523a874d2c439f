"""``python -m npresnet``: the list of commands, ``--version``, and ``python -m npresnet COMMAND ...``."""

import sys

from .commands import main

sys.exit(main())
