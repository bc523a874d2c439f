"""``python -m npresnet.learn``: see ``npresnet.learn.cli``."""

import sys

from .cli import main

sys.exit(main())
