"""``python -m npresnet.training`` is ``python -m npresnet.train``."""

import sys

from .cli import main

sys.exit(main())
