"""``python -m npresnet.gradcheck MODEL_OR_MODULE_PATH``: see ``npresnet.gradcheck.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
