"""``python -m npresnet.summary``: see ``npresnet.summary.cli``."""

import sys

from .cli import main

sys.exit(main())
