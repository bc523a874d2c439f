"""npresnet.settings: every NPRESNET_* variable read in one place, one error format, one docs table;
and the deprecated aliases of the engine's old module paths."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from npresnet import settings

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_table_is_the_settings_modules():
    text = (ROOT / "docs" / "settings.md").read_text()
    table = text.split("<!-- settings-table -->\n", 1)[1].split("<!-- settings-table end -->", 1)[0]
    assert table == settings.markdown_table(), "docs/settings.md is stale: paste settings.markdown_table() there"


def test_no_other_module_reads_an_npresnet_variable():
    """A string literal NPRESNET_* outside docstrings, comments and error messages is a read (or a
    write) that should go through npresnet.settings (``settings.X``, ``settings.variable(...)``)."""
    problems = []
    for path in sorted([*ROOT.joinpath("npresnet").rglob("*.py"), *ROOT.joinpath("kernels").glob("*.py")]):
        if path == ROOT / "npresnet" / "settings.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript | ast.Call):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                        if re.fullmatch(r"NPRESNET_[A-Z_]+", inner.value):
                            problems.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {inner.value}")
    assert not problems, "read NPRESNET_* through npresnet.settings:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("KERNELS", " NumPy ", "numpy"),
        ("KERNELS", "", "auto"),
        ("BATCH_SPLIT", "0", False),
        ("NUMBA_CACHE", "1", True),
        ("PARALLEL_MIN_BYTES", "4096", 4096),
        ("BLAS_SPIN", "default", None),
        ("BLAS_SPIN", "20", 20),
        ("AUTOTUNE_CACHE", "/tmp/x.json", "/tmp/x.json"),
        ("AUTOTUNE_CACHE", "", "default"),
        ("AUTOTUNE_CACHE", "OFF", "off"),
        ("AUTOTUNE_CACHE", "0", "off"),
    ],
)
def test_values_are_parsed(key, value, expected):
    assert settings.parse(key, {settings.variable(key): value}) == expected


@pytest.mark.parametrize(
    "key, value",
    [
        ("BACKEND", "torch"),
        ("KERNELS", "fast"),
        ("NUMBA_PARALLEL", "yes"),
        ("PARALLEL_MIN_BYTES", "1MB"),
        ("NUMBA_CACHE", "true"),
        ("AUTOTUNE", "always"),
        ("BATCH_SPLIT", "2"),
        ("BLAS_SPIN", "40"),
    ],
)
def test_a_bad_value_names_the_variable_what_came_and_what_is_expected(key, value):
    setting = next(s for s in settings.SETTINGS if s.key == key)
    message = f"{setting.variable}={value!r} is not valid: expected {setting.expected}"
    with pytest.raises(ValueError, match=re.escape(message)):
        settings.parse(key, {setting.variable: value})


def test_a_bad_value_stops_the_first_import_that_reads_the_settings():
    """``import npresnet`` alone loads nothing (its namespace is lazy); the first module that needs a
    setting (here the model layers, through the backend and the kernels) imports npresnet.settings."""
    env = {**os.environ, "NPRESNET_BLAS_SPIN": "often"}
    code = "import npresnet\nfrom npresnet import nn"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "NPRESNET_BLAS_SPIN='often' is not valid: expected 4..30 or default" in done.stderr


@pytest.mark.parametrize("old, new", [("runtime", "runtime"), ("autotune", "autotune")])
def test_the_old_module_paths_warn_and_are_the_engines_modules(old, new):
    code = f"""
import warnings
warnings.simplefilter("error", DeprecationWarning)
try:
    import npresnet.{old}
except DeprecationWarning as warning:
    print(warning)
warnings.simplefilter("ignore", DeprecationWarning)
import npresnet.{old} as old, npresnet.engine.{new} as new
from npresnet import {old} as again
print(old is new is again)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == [f"npresnet.{old} is deprecated: use npresnet.engine.{new}", "True"]
