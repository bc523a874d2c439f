"""Guards for the CuPy path that need no GPU: import-time side effects and NumPy calls on device arrays.

1. Importing npresnet must never import CuPy (it may be installed without a usable GPU, and it is
   slow to import) nor Numba (compiled kernels load on first use). Checked twice: statically (an
   ``import cupy`` that would run at import time, in any module, even inside ``try:``, which an
   import test cannot see on a machine without CuPy) and dynamically (``import npresnet`` and then
   every module, in a fresh interpreter, and look at ``sys.modules``).

2. Library code on the array path must take its array module from its input
   (``xp = get_array_module(x)``). A ``np.<function>(...)`` call there either builds host data from
   Python numbers (fine: shapes, dtypes, small constant tables) or touches an array that may live on
   the GPU (a bug: CuPy refuses the implicit conversion, or it is a silent device -> host copy). The
   AST scan below finds every ``np.``/``numpy.`` call inside a function in the array-path modules;
   dtype and constant helpers are always allowed, every other call must be listed in ``REVIEWED``
   with the reason it only sees host data. A new, unreviewed call fails the test with its
   file:line, so the reviewer decides. Calls like ``int(x.max())``, ``.item()``, ``.get()`` and
   ``to_numpy()`` are device -> host reads (a sync on CuPy) and are reviewed the same way.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# These tests read the checkout's source; CI's run against the installed wheel has only the tests.
pytestmark = pytest.mark.skipif(not (ROOT / "kernels").is_dir(), reason="no source tree beside the tests")
LIBRARY = sorted([*(ROOT / "npresnet").rglob("*.py"), *(ROOT / "kernels").glob("*.py")])

#: Modules whose functions handle (possibly device) arrays on every step: the forward/backward path.
ARRAY_PATH = sorted(
    [
        *(ROOT / "npresnet" / "functional").glob("*.py"),
        *(ROOT / "npresnet" / "nn").glob("*.py"),
        *(ROOT / "npresnet" / "models").glob("*.py"),
        ROOT / "npresnet" / "optim.py",
    ]
)

#: ``np.<name>`` that only make dtypes, scalars of a dtype, or dtype facts: safe on any backend.
DTYPE_HELPERS = {
    "dtype",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "intp",
    "uint8",
    "bool_",
    "finfo",
    "iinfo",
    "issubdtype",
    "result_type",
    "promote_types",
    "can_cast",
}

#: Generator constructors: they take seeds, never arrays.
HOST_RANDOM = {"random.default_rng", "random.Generator", "random.SeedSequence", "random.PCG64"}

#: (path relative to the repository, function qualname, call) -> why it only sees host data.
REVIEWED = {
    (
        "npresnet/functional/pooling.py",
        "_avgpool_divisor",
        "np.arange",
    ): "window starts from Python ints (the (OH, OW) divisor table is built on the host)",
    ("npresnet/functional/pooling.py", "_avgpool_divisor", "np.minimum"): "host ints (divisor table)",
    ("npresnet/functional/pooling.py", "_avgpool_divisor", "np.maximum"): "host ints (divisor table)",
    ("npresnet/functional/pooling.py", "_avgpool_divisor", "np.outer"): "host ints (divisor table)",
    (
        "npresnet/functional/pooling.py",
        "avgpool2d_forward",
        "np.full",
    ): "divisor_override table from a Python int; moved with xp.asarray right after",
    (
        "npresnet/nn/state_dict.py",
        "check_state_dict_of",
        "np.shape",
    ): "np.shape reads .shape first, so it does not convert a CuPy array",
    ("npresnet/nn/module.py", "new_parameter", "np.asarray"): "fresh host initialisation, then to_backend",
    ("npresnet/nn/module.py", "new_buffer", "np.asarray"): "fresh host initialisation, then to_backend",
    ("npresnet/nn/batchnorm.py", "BatchNorm2d.__init__", "np.ones"): "initial values on the host",
    ("npresnet/nn/batchnorm.py", "BatchNorm2d.__init__", "np.zeros"): "initial values on the host",
    ("npresnet/nn/batchnorm.py", "BatchNorm2d.__init__", "np.array"): "initial num_batches_tracked",
    (
        "npresnet/nn/batchnorm.py",
        "BatchNorm2d.forward",
        "int(self.num_batches_tracked)",
    ): "momentum=None only (cumulative average): one device -> host read per forward",
    (
        "npresnet/functional/loss.py",
        "cross_entropy_forward",
        "bool(((target < 0) | (target >= K)).any())",
    ): "validates class indices (CuPy would wrap out-of-range ones silently): one sync per call",
    ("npresnet/functional/loss.py", "cross_entropy_forward", "int(target.min())"): "error message only",
    ("npresnet/functional/loss.py", "cross_entropy_forward", "int(target.max())"): "error message only",
    (
        "npresnet/optim.py",
        "Optimizer._checked_state_value",
        "np.asarray",
    ): "load time: the 'step' count, np.asarray(to_numpy(value)) of a number or 0-d tensor, explicit",
    ("npresnet/optim.py", "Optimizer._checked_state_value", "to_numpy"): "load time, explicit",
}

#: Methods that read a device array back to the host when they appear inside int()/float()/bool().
_REDUCTIONS = {"min", "max", "sum", "mean", "any", "all", "argmax", "argmin", "item", "prod"}


def _is_cupy_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in ("cupy", "cupyx")


class _ImportTimeCupy(ast.NodeVisitor):
    """Every cupy import that runs when the module is imported (outside any function body)."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:  # bodies run later, when called
        for decorator in getattr(node, "decorator_list", []):
            self.visit(decorator)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(node.lineno, f"import {a.name}") for a in node.names if _is_cupy_module(a.name)]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if _is_cupy_module(node.module):
            self.found.append((node.lineno, f"from {node.module} import ..."))

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        if name in ("importlib.import_module", "import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_cupy_module(arg.value):
                self.found.append((node.lineno, ast.unparse(node)))
        self.generic_visit(node)


def test_no_module_imports_cupy_at_import_time():
    problems = []
    for path in LIBRARY:
        finder = _ImportTimeCupy()
        finder.visit(ast.parse(path.read_text(), str(path)))
        problems += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in finder.found]
    assert not problems, (
        "CuPy must be imported lazily, inside the function that needs it "
        "(see npresnet.backend._import_cupy):\n  " + "\n  ".join(problems)
    )


def _modules_after(code: str) -> set[str]:
    """Top-level names in sys.modules after running ``code`` in a fresh interpreter."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_npresnet_leaves_cupy_numba_and_torch_out():
    loaded = _modules_after("import npresnet, npresnet.kernels, npresnet.backend")
    assert not loaded & {"cupy", "cupyx", "cupy_backends", "numba", "numba_cuda", "torch"}, sorted(loaded)


# Every module, in a fresh interpreter. The kernel modules (npresnet.kernels.*: Numba CPU and CUDA
# kernels, loaded by kernels.get on first use) import Numba by design; nothing else may.
_IMPORT_ALL = """
import importlib, pkgutil, npresnet, npresnet.kernels
names = [m.name for m in pkgutil.walk_packages(npresnet.__path__, "npresnet.")
         if not m.name.endswith(".__main__")]   # `python -m` entry points run their CLI when imported
kernel_names = ["npresnet.kernels." + m.name for m in pkgutil.iter_modules(npresnet.kernels.__path__)]
assert len(names) > 30 and len(kernel_names) > 5, (names, kernel_names)
for name in names:
    importlib.import_module(name)
for name in kernel_names if {with_kernels} else []:
    try:
        importlib.import_module(name)
    except ImportError:                  # Numba or numba-cuda not installed: an optional dependency
        pass
"""


def test_importing_every_module_never_imports_cupy():
    loaded = _modules_after(_IMPORT_ALL.format(with_kernels=True))
    if importlib.util.find_spec("numba") is not None:
        assert "numba" in loaded  # the kernel modules really were imported
    assert not loaded & {"cupy", "cupyx", "cupy_backends"}, sorted(loaded)


def test_only_the_kernel_modules_import_numba():
    loaded = _modules_after(_IMPORT_ALL.format(with_kernels=False))
    assert not loaded & {"numba", "numba_cuda", "cupy", "cupyx"}, sorted(loaded)


# ------------------------------------------------------------------------------------------------
# NumPy calls on the array path


class _HostCalls(ast.NodeVisitor):
    """(line, qualname of the enclosing function, call text) for np./numpy. calls and host reads."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.found: list[tuple[int, str, str]] = []

    def _scope(self, node: ast.AST) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scope

    def _in_function(self) -> bool:
        return bool(self.stack)

    def visit_Call(self, node: ast.Call) -> None:
        func = ast.unparse(node.func)
        where = ".".join(self.stack)
        if self._in_function():
            head, _, attr = func.partition(".")
            if head in ("np", "numpy") and attr.split(".")[0] not in DTYPE_HELPERS and attr not in HOST_RANDOM:
                self.found.append((node.lineno, where, "np." + attr))
            elif func in ("to_numpy", "backend.to_numpy"):
                self.found.append((node.lineno, where, "to_numpy"))
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr in ("item", "tolist", "get")
                and not node.args
                and func not in ("results.get",)
            ):
                self.found.append((node.lineno, where, f".{node.func.attr}()"))
            elif func in ("int", "float", "bool") and len(node.args) == 1 and self._reads_device(node.args[0]):
                self.found.append((node.lineno, where, ast.unparse(node)))
        self.generic_visit(node)

    @staticmethod
    def _reads_device(arg: ast.AST) -> bool:
        """An argument that may be a device array or a reduction of one (heuristic)."""
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in _REDUCTIONS:
                return True
        # an attribute of the module itself (a buffer such as self.num_batches_tracked lives on the device)
        return (
            isinstance(arg, ast.Attribute)
            and ast.unparse(arg).startswith("self.")
            and arg.attr not in ("size", "ndim", "nbytes", "itemsize")
        )  # Python ints on CuPy too


def _host_calls() -> list[tuple[str, int, str, str]]:
    calls = []
    for path in ARRAY_PATH:
        finder = _HostCalls()
        finder.visit(ast.parse(path.read_text(), str(path)))
        rel = path.relative_to(ROOT).as_posix()
        calls += [(rel, line, where, call) for line, where, call in finder.found]
    return calls


def _reviewed_key(rel: str, where: str, call: str) -> tuple[str, str, str] | None:
    key = (rel, where, call)
    return key if key in REVIEWED else None


def test_array_path_calls_no_numpy_on_device_arrays():
    unreviewed = [
        f"{rel}:{line} in {where}(): {call}"
        for rel, line, where, call in _host_calls()
        if _reviewed_key(rel, where, call) is None
    ]
    assert not unreviewed, (
        "NumPy calls or device -> host reads on the array path that nobody has reviewed. Use "
        "xp = get_array_module(x) and xp.<function>, or, if the call only ever sees host data (Python "
        "numbers, shapes), add it to REVIEWED in tests/test_import_guard.py with the reason:\n  "
        + "\n  ".join(unreviewed)
    )


def test_reviewed_list_has_no_stale_entries():
    present = {(rel, where, call) for rel, _, where, call in _host_calls()}
    stale = sorted(set(REVIEWED) - present)
    assert not stale, "REVIEWED lists calls that are gone (delete these entries):\n  " + "\n  ".join(map(str, stale))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f(x):\n    return np.asarray(x)\n", ["np.asarray"]),
        ("def f(x):\n    return np.add.at(x, 0, 1)\n", ["np.add.at"]),
        ("def f(x):\n    return int(x.max())\n", ["int(x.max())"]),
        ("def f(x):\n    return x.item() + float(x.sum())\n", [".item()", "float(x.sum())"]),
        ("def f(x):\n    return np.dtype(x.dtype), np.float32(1), int(x.shape[0]), bool(x)\n", []),
        (
            "def f(self):\n    return np.random.default_rng(0), int(self.num_batches_tracked)\n",
            ["int(self.num_batches_tracked)"],
        ),
        ("y = np.zeros(3)\n", []),  # module level: constants built once on the host
    ],
)
def test_the_scanner_flags_what_it_should(source, expected):
    finder = _HostCalls()
    finder.visit(ast.parse(source))
    assert [call for _, _, call in finder.found] == expected


def test_the_import_scanner_flags_what_it_should():
    source = (
        "import numpy\ntry:\n    import cupy\nexcept ImportError:\n    cupy = None\n"
        "from cupyx import scipy\nimportlib.import_module('cupy')\n"
        "def lazy():\n    import cupy\n    return cupy\n"
    )
    finder = _ImportTimeCupy()
    finder.visit(ast.parse(source))
    assert [line for line, _ in finder.found] == [3, 6, 7]


# ------------------------------------------------------------------------------------------------
# The layers: kernels/ is the leaf of the import graph


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, anywhere in the file (functions too).

    Relative imports are resolved against the package the file is installed as (kernels/ is
    ``npresnet.kernels``), so ``from .. import functional`` shows up as ``npresnet.functional``.
    """
    package = (
        "npresnet.kernels"
        if path.parent.name == "kernels"
        else ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    )
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "import_module"):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
    return found


#: What kernels/ may import besides the standard library and itself (npresnet.kernels.*).
KERNEL_DEPENDENCIES = {"numpy", "numba", "cupy"}


def test_kernels_import_nothing_of_npresnet_but_themselves():
    """kernels/ imports numpy, numba, (lazily) cupy and its own modules, such as the shared
    ``npresnet.kernels.geometry``, and ``npresnet.settings`` (itself standard library only, the one
    reader of the NPRESNET_* variables): never ``npresnet.functional``, ``npresnet.backend`` or any other
    layer, so functional -> kernels is the only arrow between them and a checkout has no import cycle."""
    problems = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if name == "npresnet.kernels" or name.startswith("npresnet.kernels.") or name == "npresnet.settings":
                continue
            if top in sys.stdlib_module_names or top in KERNEL_DEPENDENCIES or top == "__future__":
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not problems, "kernels/ must stay a leaf (numpy, numba and its own modules only):\n  " + "\n  ".join(
        problems
    )


def test_the_kernels_package_loads_without_the_rest_of_npresnet():
    """The same fact, observed: every kernel module imports in a fresh interpreter where kernels/ is a
    package of its own (not npresnet.kernels), and no npresnet module gets loaded on the way."""
    code = f"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {str(ROOT)!r})
import kernels
names = [m.name for m in pkgutil.iter_modules(kernels.__path__)]
for name in names:
    try:
        importlib.import_module("kernels." + name)
    except ImportError as exc:               # numba-cuda missing: fine, as long as it is not npresnet
        assert "npresnet" not in str(exc), exc
print(json.dumps([len(names), sorted(m for m in sys.modules if m.split(".")[0] == "npresnet")]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    count, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert count > 5 and loaded == [], loaded


def test_running_the_kernels_as_a_package_of_their_own_leaves_no_cache_that_breaks_npresnet(tmp_path):
    """A real sequence that broke every later process: a kernel run under ``import kernels`` wrote a
    Numba cache entry naming module ``kernels``, which ``npresnet.kernels`` then loaded and failed on
    (``No module named 'kernels'``). Both processes share one NUMBA_CACHE_DIR, as they would share
    ``kernels/__pycache__``; the relu kernel runs serial (1 thread) and parallel (2 threads)."""
    run = """
import numpy as np, sys
from {package} import relu_cpu
x = np.linspace(-1, 1, 40_000, dtype=np.float32)
y = relu_cpu.relu_forward(x)
assert np.array_equal(y, np.maximum(x, 0)), "wrong relu"
print("ok")
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NPRESNET_NUMBA_CACHE": "1"}
    for threads in ("1", "2"):
        env["NUMBA_NUM_THREADS"] = threads
        standalone = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + run.format(package="kernels")
        for code in (standalone, run.format(package="npresnet.kernels"), standalone):
            result = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-4000:]


def test_a_checkout_that_is_not_installed_says_so_in_one_line():
    """``import npresnet`` from a bare checkout (no editable finder: ``-S`` skips site's .pth files, and only
    NumPy's folder is put back on the path) fails with one line naming ``pip install -e .``."""
    numpy_home = str(Path(np.__file__).resolve().parent.parent)
    code = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {numpy_home!r}]; import npresnet"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: npresnet is not installed: run `pip install -e .` in the repository root (it maps the "
        "top-level kernels/ folder to npresnet.kernels)"
    )


def test_import_npresnet_is_enough_for_optim_schedules_and_data():
    """As with torch.optim: ``import npresnet`` and then ``npresnet.optim.SGD(...)``, in a fresh interpreter."""
    code = """
import npresnet
model = npresnet.nn.Linear(3, 2)
optimizer = npresnet.optim.SGD(model.parameters(), lr=0.1)
schedule = npresnet.schedules.MultiStepLR(optimizer, milestones=[2])
dataset = npresnet.data.ArrayDataset(__import__("numpy").zeros((4, 3, 2, 2), "float32"), [0, 1, 0, 1])
loader = npresnet.data.DataLoader(dataset, batch_size=2)
print(type(optimizer).__name__, type(schedule).__name__, len(loader))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["SGD", "MultiStepLR", "2"]
