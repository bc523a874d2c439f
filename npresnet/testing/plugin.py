"""npresnet's pytest plugin: seeded ``rng`` per test, a ``float64`` caster, and ``--npresnet-seed``.

Installed with npresnet and loaded by pytest on its own (the ``pytest11`` entry point ``npresnet``
in pyproject.toml; ``-p no:npresnet`` turns it off). Loading it imports neither NumPy nor the rest
of npresnet (pytest loads it in every test run of the environment, whether the project uses
npresnet or not): the fixtures import NumPy when a test asks for them.

* ``rng``: a ``numpy.random.Generator`` seeded per test from the test's id, so each test draws its
  own numbers, the same on every run. When a test that used it fails, the report shows the seed and
  the command that replays it: ``pytest <test id> --npresnet-seed <seed>``.
* ``float64``: ``float64(thing)`` returns a float64 copy of a floating array, of a Module
  (parameters and buffers; integer buffers keep their dtype), or of each element of a tuple or
  list; integer arrays (class targets) are copied as they are. Finite differences need float64;
  the original stays as it was.
* ``--npresnet-seed N``: every test's ``rng`` starts from seed N.

A ``conftest.py`` fixture of the same name overrides a plugin fixture (pytest's rule), so a project
that already has an ``rng`` fixture keeps its own.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numpy as np

_SEED_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("npresnet", "npresnet testing tools")
    group.addoption(
        "--npresnet-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed every test's rng fixture with N (default: a seed derived from the test id; "
        "a failing test prints its seed)",
    )


def seed_for(config: pytest.Config, nodeid: str) -> int:
    """The seed of the ``rng`` fixture: ``--npresnet-seed`` if given, else a stable hash of the test id."""
    chosen = config.getoption("npresnet_seed", None)
    return int(chosen) if chosen is not None else zlib.crc32(nodeid.encode())


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator seeded for this test (printed when the test fails)."""
    import numpy as np

    seed = seed_for(request.config, request.node.nodeid)
    request.node.stash[_SEED_KEY] = seed
    return np.random.default_rng(seed)


@pytest.fixture
def float64() -> Callable[[Any], Any]:
    """``float64(array | Module | tuple | list)``: a float64 copy (see the module docstring)."""
    return to_float64


def to_float64(thing: Any) -> Any:
    """A float64 copy of an array, a Module, or each element of a tuple or list (others as they are)."""
    import copy

    import numpy as np

    if isinstance(thing, (tuple, list)):
        return type(thing)(to_float64(t) for t in thing)
    if hasattr(thing, "named_parameters") and hasattr(thing, "to"):  # an npresnet Module
        return copy.deepcopy(thing).to(np.float64)
    if hasattr(thing, "dtype") and hasattr(thing, "astype"):
        return thing.astype(np.float64) if thing.dtype.kind == "f" else thing.copy()  # class targets stay ints
    if isinstance(thing, float):
        return np.float64(thing)
    return thing


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    """Add the seed of a failed test's rng, and the command that replays it, to its failure report."""
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("npresnet", f"rng seed {seed}; replay: pytest {item.nodeid} --npresnet-seed {seed}"))
