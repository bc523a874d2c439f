"""Small, runnable experiments from the ResNet paper (run with ``python -m npresnet.experiments.<name>``)."""
