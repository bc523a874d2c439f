"""``python -m npresnet.train``: the training command. The code lives in ``npresnet.training``.

This module keeps the command's name and re-exports the training API, so ``from npresnet.train
import TrainConfig, train`` keeps working.
"""

import sys

from .training import *  # noqa: F403
from .training import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
