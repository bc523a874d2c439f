"""The pytest plugin (npresnet.testing.plugin) in a temporary project, through ``pytester``.

It is loaded by its ``pytest11`` entry point, as in any project that installs npresnet: the inner
runs below do not name it. Checked: ``rng`` is seeded per test (different tests, different
numbers; the same numbers on every run), ``--npresnet-seed`` fixes the seed, a failing test's report
shows its seed and the replay command, ``float64`` casts arrays, modules and tuples, a project's
own ``rng`` fixture overrides the plugin's, and ``-p no:npresnet`` turns the plugin off.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points

import numpy as np

pytest_plugins = ["pytester"]

DRAWS = """
import json, pathlib
def test_first(rng):
    pathlib.Path("first.json").write_text(json.dumps(rng.random(3).tolist()))
def test_second(rng):
    pathlib.Path("second.json").write_text(json.dumps(rng.random(3).tolist()))
"""


def _draws(pytester, *args: str) -> tuple[list[float], list[float]]:
    pytester.makepyfile(test_draws=DRAWS)
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=2)
    first = json.loads((pytester.path / "first.json").read_text())
    second = json.loads((pytester.path / "second.json").read_text())
    return first, second


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("npresnet") == "npresnet.testing.plugin"


def test_rng_is_seeded_per_test_and_the_same_on_every_run(pytester):
    first, second = _draws(pytester)
    assert first != second  # each test its own stream
    again_first, again_second = _draws(pytester)
    assert (again_first, again_second) == (first, second)  # and the same numbers next run


def test_npresnet_seed_fixes_every_test_seed(pytester):
    first, second = _draws(pytester, "--npresnet-seed", "123")
    expected = np.random.default_rng(123).random(3).tolist()
    assert first == second == expected


def test_a_failing_test_prints_its_seed_and_the_replay_command(pytester):
    pytester.makepyfile(test_fails="def test_unlucky(rng):\n    assert rng.random() > 2\n")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    match = re.search(r"rng seed (\d+); replay: pytest test_fails.py::test_unlucky --npresnet-seed (\d+)", output)
    assert match and match.group(1) == match.group(2), output
    # the printed seed replays the same draw
    pytester.makepyfile(
        test_replay=f"""
import numpy as np
def test_same(rng):
    assert rng.random() == np.random.default_rng({match.group(1)}).random()
"""
    )
    pytester.runpytest_inprocess("test_replay.py", "--npresnet-seed", match.group(1)).assert_outcomes(passed=1)


def test_a_passing_test_prints_no_seed(pytester):
    pytester.makepyfile(test_ok="def test_fine(rng):\n    assert rng.random() < 2\n")
    result = pytester.runpytest_inprocess("-rA")
    result.assert_outcomes(passed=1)
    assert "rng seed" not in result.stdout.str()


def test_float64_casts_arrays_modules_and_tuples(pytester):
    pytester.makepyfile(
        test_cast="""
import numpy as np
from npresnet import nn

def test_cast(float64):
    x = np.ones((2, 3), np.float32)
    target = np.array([1, 0])
    bn = nn.BatchNorm2d(3)
    x64, target_same = float64((x, target))
    assert x64.dtype == np.float64 and x.dtype == np.float32 and x64 is not x
    assert target_same.dtype == target.dtype                      # class targets stay integers
    bn64 = float64(bn)
    assert bn64.weight.dtype == np.float64 and bn.weight.dtype == np.float32   # a copy
    assert bn64.running_var.dtype == np.float64 and bn64.num_batches_tracked.dtype.kind == "i"
"""
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_a_project_rng_fixture_overrides_the_plugin(pytester):
    pytester.makeconftest(
        "import numpy as np, pytest\n@pytest.fixture\ndef rng():\n    return np.random.default_rng(7)\n"
    )
    pytester.makepyfile(
        test_own="import numpy as np\ndef test_own(rng):\n"
        "    assert rng.random() == np.random.default_rng(7).random()\n"
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_the_plugin_can_be_turned_off(pytester):
    pytester.makepyfile(test_needs="def test_needs(rng):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:npresnet")
    result.assert_outcomes(errors=1)
    assert "fixture 'rng' not found" in result.stdout.str()
    assert "--npresnet-seed" in pytester.runpytest_inprocess("--help").stdout.str()


def test_this_project_draws_from_the_plugins_rng(rng, request):
    """Dogfooding: tests/conftest.py defines no rng, so the suite's tests use the plugin's (seeded per
    test id, printed on failure, reseeded by --npresnet-seed)."""
    from npresnet.testing.plugin import seed_for

    seed = seed_for(request.config, request.node.nodeid)
    assert rng.random() == np.random.default_rng(seed).random()


def test_loading_the_plugin_imports_neither_numpy_nor_the_rest_of_npresnet():
    """pytest loads the plugin in every test run of an environment that has npresnet installed, for
    projects that never use it: loading it must cost them nothing but the plugin (NumPy, npresnet's
    layers and kernels are imported by the fixtures, when a test asks for one)."""
    import subprocess
    import sys

    code = (
        "import sys, pytest\n"
        "import npresnet.testing.plugin\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'numba', 'npresnet'))))"
    )
    done = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["npresnet", "npresnet.testing", "npresnet.testing.plugin"]
