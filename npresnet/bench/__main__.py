"""``python -m npresnet.bench``."""

from .cli import main

main()
