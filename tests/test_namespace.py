"""npresnet's namespace is its API: ``dir(npresnet)`` lists ``__all__`` and no internal module, and
``npresnet.summary`` / ``npresnet.gradcheck`` are the packages (their functions one name further in).
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import npresnet
from npresnet import models, nn

# The public names of ``import npresnet``. A name added or removed here is an API change: say so in CHANGELOG.md.
PUBLIC = {
    "GradcheckError",
    "GradcheckReport",
    "NondifferentiableError",
    "backend",
    "data",
    "engine",
    "functional",
    "gradcheck",
    "io",
    "is_grad_enabled",
    "load",
    "models",
    "nn",
    "no_grad",
    "optim",
    "save",
    "schedules",
    "summary",
    "testing",
}


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (in this session other tests have imported more submodules)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dir_of_npresnet_is_its_api():
    public = _run("import npresnet; print(' '.join(n for n in dir(npresnet) if not n.startswith('_')))").split()
    assert set(public) == PUBLIC, f"not in the API: {set(public) - PUBLIC}; missing: {PUBLIC - set(public)}"
    assert set(npresnet.__all__) == PUBLIC


def test_an_internal_module_still_imports_and_resolves_as_an_attribute():
    # grad_mode and checks are imported by `import npresnet`, then unbound from its namespace
    assert _run(
        "import npresnet.checks, npresnet.grad_mode; print(npresnet.checks.__name__, npresnet.grad_mode.no_grad)"
    )
    assert npresnet.grad_mode.no_grad is npresnet.no_grad
    with pytest.raises(AttributeError, match="module 'npresnet' has no attribute 'not_a_module'"):
        npresnet.not_a_module  # noqa: B018  (the attribute access is the test)


@pytest.mark.parametrize("name", ["summary", "gradcheck"])
def test_summary_and_gradcheck_are_their_packages(name):
    import importlib

    module = importlib.import_module(f"npresnet.{name}")
    assert isinstance(module, types.ModuleType)
    assert getattr(npresnet, name) is module
    assert isinstance(
        getattr(module, name), types.FunctionType
    )  # npresnet.summary.summary, npresnet.gradcheck.gradcheck


def test_calling_the_package_is_deprecated_and_gives_the_same_result(rng):
    model = models.resnet20(seed=0)
    with pytest.warns(DeprecationWarning, match=r"call npresnet\.summary\.summary\(\.\.\.\)"):
        old = npresnet.summary(model, (1, 3, 32, 32))
    assert old.rows == npresnet.summary.summary(model, (1, 3, 32, 32)).rows

    conv = nn.Conv2d(2, 3, 3, padding=1, rng=rng).to(np.float64)
    x = rng.standard_normal((2, 2, 4, 4))
    with pytest.warns(DeprecationWarning, match=r"call npresnet\.gradcheck\.gradcheck\(\.\.\.\)"):
        old_report = npresnet.gradcheck(conv, x, mode="directional")
    new_report = npresnet.gradcheck.gradcheck(conv, x, mode="directional")
    assert str(old_report) == str(new_report)


def test_the_moved_modules_of_0_1_resolve_as_attributes_with_a_deprecation_warning():
    # 0.1 users wrote `import npresnet; npresnet.runtime.set_num_threads(2)` with no import of runtime
    out = _run(
        "import warnings, npresnet, npresnet.engine.runtime as r, npresnet.engine.autotune as a\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    same = npresnet.runtime is r and npresnet.autotune is a\n"
        "print(same, sorted(str(w.message) for w in caught), 'runtime' in dir(npresnet))"
    )
    assert out.split()[0] == "True", out
    assert "npresnet.runtime is deprecated: use npresnet.engine.runtime" in out, out
    assert "npresnet.autotune is deprecated: use npresnet.engine.autotune" in out, out
    assert out.split()[-1] == "False", out
