"""docs/tutorial.md runs: its ```python blocks are executed in order, in one shared namespace, as
ONE test (a reader runs the page top to bottom, and later blocks use names defined earlier, so a
block on its own is not a test; a failure names the block's section and first line). Also checks
that every figure the tutorial shows is a file in the repository, and that every derivation step
calls gradcheck. The diagrams are drawn by docs/draw_tutorial_figures.py, which runs here too."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")


def python_blocks(text: str) -> list[tuple[str, int, str]]:
    """(section heading, line number, code) of every ```python block, in order."""
    blocks, heading = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        if line.strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            blocks.append((heading, start + 1, "\n".join(lines[start:end])))
            i = end
        i += 1
    return blocks


with open(TUTORIAL, encoding="utf-8") as _f:
    TEXT = _f.read()
BLOCKS = python_blocks(TEXT)


def test_the_tutorial_has_the_promised_steps():
    headings = [h for h, _, _ in BLOCKS]
    topics = (
        "Linear",
        "ReLU",
        "Max-pooling",
        "Average pooling",
        "im2col",
        "BatchNorm",
        "residual add",
        "cross-entropy",
    )
    for topic in topics:
        assert any(topic in h for h in headings), f"no runnable block in a section about {topic}"
    # each derivation step (1-8) checks its backward numerically with gradcheck
    for number in range(1, 9):
        code = "\n".join(c for h, _, c in BLOCKS if h.startswith(f"{number}."))
        assert "gradcheck(" in code, f"section {number} never calls gradcheck"


def test_every_block_runs_in_order(capsys):  # capsys: keep the tutorial's prints out of the log
    """All blocks, top to bottom, in one fresh namespace: the tutorial as a reader runs it."""
    namespace: dict = {"__name__": "tutorial"}
    for index, (heading, line, code) in enumerate(BLOCKS):
        try:
            exec(compile(code, f"{TUTORIAL}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(
                f"tutorial block {index} (section {heading!r}, line {line}) failed: {type(error).__name__}: {error}"
            ) from error


def test_figures_referenced_exist():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT)
    assert figures, "the tutorial shows no figure"
    for path in figures:
        assert os.path.isfile(os.path.join(ROOT, "docs", path)), (
            f"docs/{path} is missing: run the command in section 9, or python docs/draw_tutorial_figures.py"
        )


def test_the_diagrams_are_drawn_by_the_script_in_the_repository(tmp_path):
    """docs/draw_tutorial_figures.py draws every diagram the tutorial shows from docs/tutorial/."""
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "docs", "draw_tutorial_figures.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    drawn = {f"tutorial/{name}" for name in os.listdir(tmp_path)}
    shown = {path for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT) if path.startswith("tutorial/")}
    assert shown and shown <= drawn, (shown, drawn)
