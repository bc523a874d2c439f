"""npresnet as users install it: the built wheel holds every module of the source tree, one version.

The wheel is built from a copy of the source (npresnet/, kernels/, setup.py, pyproject.toml,
README.md) in a temporary folder, so the checkout gets no build/ or egg-info of its own, and its
files are compared with the tree: every ``.py`` under npresnet/ at the same path, every ``.py`` of the
top-level kernels/ under npresnet/kernels/, nothing else at the top level. Then the version: the
wheel's metadata, ``npresnet.__version__`` and ``python -m npresnet --version`` agree.

CI also runs the suite against the wheel installed in a fresh environment, from a folder outside
the checkout; it sets NPRESNET_TEST_INSTALLED to the checkout's path, and the last test proves the
npresnet under test is the installed one, not the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import npresnet

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ["npresnet", "kernels", "setup.py", "pyproject.toml", "README.md"]
have_source = all((ROOT / name).exists() for name in ("npresnet", "kernels", "pyproject.toml"))


def source_modules() -> set[str]:
    """The wheel paths the tree's modules must have: npresnet/**.py, and kernels/**.py as npresnet/kernels/."""
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "npresnet").rglob("*.py")}
    modules |= {"npresnet/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").rglob("*.py")}
    return {m for m in modules if "__pycache__" not in m}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="77")
    if not have_source:
        pytest.skip("no source tree beside the tests (the suite runs against an installed npresnet)")
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for name in SOURCE:
        source = ROOT / name
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(tree)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = out.glob("npresnet-*.whl")
    return built


def test_the_wheel_holds_every_module_of_the_source_tree_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.endswith(".py")}
    assert modules == source_modules(), (
        f"missing from the wheel: {sorted(source_modules() - modules)}; "
        f"not in the tree: {sorted(modules - source_modules())}"
    )
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"npresnet"}, top_level  # no `kernels`, `tests` or `bench` of its own


def test_the_wheel_the_package_and_the_command_give_one_version(wheel):
    (metadata,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
    fields = Parser().parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
    assert fields["Name"] == "npresnet" and fields["Version"] == npresnet.__version__, (fields["Version"],)
    assert wheel.name.startswith(f"npresnet-{npresnet.__version__}-")
    shown = subprocess.run(
        [sys.executable, "-m", "npresnet", "--version"], capture_output=True, text=True, timeout=120, cwd=wheel.parent
    )
    assert shown.returncode == 0 and shown.stdout.strip() == f"npresnet {npresnet.__version__}", shown


def test_the_installed_metadata_has_the_package_version():
    """What pip recorded (``importlib.metadata``) is the version the package says it is: an install
    older than the source (reinstall with ``pip install -e .``) shows up here."""
    from importlib.metadata import version

    assert version("npresnet") == npresnet.__version__


@pytest.mark.skipif(not os.environ.get("NPRESNET_TEST_INSTALLED"), reason="set by CI's run against the wheel")
def test_the_package_under_test_is_the_installed_wheel_not_the_checkout():
    checkout = Path(os.environ["NPRESNET_TEST_INSTALLED"]).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    import npresnet.kernels

    for module in (npresnet, npresnet.kernels):
        where = Path(module.__file__ or "").resolve()
        assert not where.is_relative_to(checkout), (module.__name__, where, checkout)
        assert where.is_relative_to(site), (module.__name__, where, site)


@pytest.fixture
def holder(tmp_path) -> Path:
    """A folder that holds the checkout under the name a plain ``git clone`` gives it: npresnet/."""
    if not (ROOT / "__init__.py").is_file():
        pytest.skip("no checkout beside the tests")
    try:
        (tmp_path / "npresnet").symlink_to(ROOT, target_is_directory=True)
    except OSError as error:
        pytest.skip(f"no symlink here: {error}")
    return tmp_path


def test_commands_work_in_the_folder_that_holds_the_clone(holder):
    """There the clone comes first on sys.path as ``npresnet``; its root __init__.py hands the import
    to the installed package (``python -m npresnet.bench`` found the repository's bench/ folder and
    failed; other commands ran without npresnet/__init__.py)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=holder, capture_output=True, text=True, timeout=300)

    found = run("-c", "import npresnet, npresnet.kernels; print(npresnet.__file__); print(npresnet.kernels.__file__)")
    assert found.returncode == 0, found.stderr
    import npresnet.kernels

    assert found.stdout.split() == [npresnet.__file__, npresnet.kernels.__file__]
    for command in (["-m", "npresnet.bench", "--help"], ["-m", "npresnet.summary", "--help"]):
        done = run(*command)
        assert done.returncode == 0 and done.stdout.startswith("usage:"), (command, done.stderr[-2000:])
    version = run("-m", "npresnet", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"npresnet {npresnet.__version__}", version


def test_without_an_installed_npresnet_the_clone_says_what_to_do_in_one_line(holder):
    """``python -S`` leaves site-packages (and every install in it) off sys.path."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", "import npresnet"], cwd=holder, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and "no npresnet is installed: run `pip install -e .`" in last, last
