"""docs/testing-your-layer.md runs, block by block, each on its own.

The page's code blocks, in a fresh project folder (``tmp_path``):

* a ```python block whose first line is ``# file: NAME`` is written to that file;
* every other ```python block runs alone, in a fresh namespace, in that folder (it imports what it
  uses; nothing carries over from the block before), and the lines of the ```text block right after
  it must each be a line it prints (a line ending in ``...`` matches any line that starts so);
* a ```console block's ``$ command`` runs in that folder, and each line shown under it must be a
  line of the command's output (the same ``...`` rule).

A figure written with three significant digits (``6.65e-10``) is a finite-difference error: rounding
noise of size about ``u * |L| / eps``, whose digits change with the BLAS kernel, the vector width and
the thread count. Its order of magnitude is what the math fixes, so it matches any figure of the same
sign within a factor of 10; every other character of the line must match exactly.

A failure names the block by its section and line.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing-your-layer.md"


def parse_blocks(text: str) -> list[dict]:
    """Every fenced block: its language, section heading, first line number and code."""
    blocks, heading, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.startswith("```") and line.strip() != "```" and not line.startswith("````"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(
                {"lang": line.strip()[3:], "heading": heading, "line": i + 2, "code": "\n".join(lines[i + 1 : end])}
            )
            i = end
        i += 1
    return blocks


BLOCKS = parse_blocks(PAGE.read_text(encoding="utf-8"))
FILES = {
    b["code"].splitlines()[0][len("# file: ") :]: b["code"]
    for b in BLOCKS
    if b["lang"] == "python" and b["code"].startswith("# file: ")
}
RUNNABLE = [
    (i, b)
    for i, b in enumerate(BLOCKS)
    if b["lang"] == "console" or (b["lang"] == "python" and not b["code"].startswith("# file: "))
]


def _shown_after(index: int) -> list[str]:
    """The lines of the ```text block right after block ``index`` (none if there is none)."""
    following = BLOCKS[index + 1] if index + 1 < len(BLOCKS) else None
    return following["code"].splitlines() if following and following["lang"] == "text" else []


#: A rounding-noise figure as the page prints it: three significant digits, an exponent.
NOISE = re.compile(r"-?\d\.\d\de[-+]\d\d")


def shows(want: str, line: str) -> bool:
    """Whether printed ``line`` is the page's ``want``: the same text, noise figures within 10x."""
    prefix = want.endswith("...")
    want = want[:-3] if prefix else want
    pattern = "".join(f"({NOISE.pattern})" if i % 2 else re.escape(part) for i, part in enumerate(_split(want)))
    match = (re.match if prefix else re.fullmatch)(pattern, line)
    if match is None:
        return False
    figures = zip(NOISE.findall(want), match.groups())
    return all(float(a) * float(b) > 0 and 0.1 <= float(b) / float(a) <= 10 for a, b in figures)


def _split(text: str) -> list[str]:
    """``text`` cut around its noise figures: [text, figure, text, figure, ..., text]."""
    return re.split(f"({NOISE.pattern})", text)


def assert_shows(expected: list[str], output: str, where: str) -> None:
    lines = [line.rstrip() for line in output.splitlines()]
    for want in (w.rstrip() for w in expected if w.strip()):
        ok = any(shows(want, line) for line in lines)
        assert ok, f"{where}: the page shows\n  {want}\nbut the block printed:\n{output}"


def test_noise_figures_match_to_their_order_of_magnitude_and_the_rest_exactly():
    want = "  ok   input 0        256 elements  max rel 2.03e-07  norm ratio 6.65e-10  max abs 1.58e-09"
    assert shows(want, want)
    assert shows(want, want.replace("6.65e-10", "6.98e-10").replace("1.58e-09", "1.84e-09"))  # an AVX2 machine
    assert not shows(want, want.replace("6.65e-10", "7.00e-09"))  # more than 10x: a real change
    assert not shows(want, want.replace("1.58e-09", "-1.58e-09"))
    assert not shows(want, want.replace("ok   input", "FAIL input"))
    assert not shows(want, want + " and more")
    assert shows("  ok   input 0 ...", want) and not shows("  ok   input 1 ...", want)
    assert shows("atol=1e-05 rtol=0.001", "atol=1e-05 rtol=0.001") and not shows("atol=1e-05", "atol=1e-06")


@pytest.fixture
def project(tmp_path, monkeypatch):
    for name, code in FILES.items():
        (tmp_path / name).write_text(code + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in FILES:  # the page's modules must not leak into other tests
        sys.modules.pop(Path(name).stem, None)


def test_the_page_has_the_promised_parts():
    text = PAGE.read_text(encoding="utf-8")
    for tool in (
        "check_module(",
        "assert_matches_torch(",
        "conv2d_configs(",
        "def test_matches_torch(rng, float64)",
        "python -m npresnet.gradcheck",
        "ForgetsTheDirectPath",
    ):
        assert tool in text, f"the page never shows {tool}"
    assert "mylayers.py" in FILES and "test_mylayers.py" in FILES


@pytest.mark.parametrize("index, block", RUNNABLE, ids=[f"{b['heading'][:30]} (line {b['line']})" for _, b in RUNNABLE])
def test_block_runs_on_its_own(project, index, block):
    where = f"docs/testing-your-layer.md:{block['line']} ({block['heading']})"
    if block["lang"] == "python":
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block["code"], where, "exec"), {"__name__": "__docs__"})
        assert_shows(_shown_after(index), printed.getvalue(), where)
        return
    lines = block["code"].splitlines()
    assert lines and lines[0].startswith("$ "), f"{where}: a console block starts with '$ command'"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
        "OPENBLAS_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
    }
    command = shlex.split(lines[0][2:])
    command[0] = sys.executable if command[0] == "python" else command[0]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{where}: {lines[0]} failed:\n{result.stdout}{result.stderr}"
    assert_shows(lines[1:], result.stdout, where)
