"""Package discovery, the one thing pyproject.toml cannot say (everything else is configured there).

Every package under npresnet/ is found by its folder, so a new subpackage is installed without a list
to update; the top-level kernels/ folder (and any package inside it) is installed as npresnet.kernels
through pyproject's package-dir mapping, which setuptools' `find` in pyproject.toml does not follow.
tests/test_packaging.py checks that the built wheel holds every module of the source tree.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["npresnet", "npresnet.*"])
packages += ["npresnet.kernels"] + [f"npresnet.kernels.{name}" for name in find_packages("kernels")]
setup(packages=packages)
