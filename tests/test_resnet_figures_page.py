"""docs/resnet-figures.md: every figure on the page is regenerated from the code, and the page must agree.

The page is made of questions (``### `` headings); each is answered by commands and their output:

* a ``console`` block whose first line is ``$ python -m npresnet.summary ...``: the rest of the block is
  the command's output, or, when the block holds the command alone, the markdown table right after it
  (a ``--format markdown`` output, rendered on the page);
* a ``python`` block followed by a ``text`` block: what the code prints.

The test runs every command and compares its output with the page, character for character. Every
number in the prose of a section must also appear in that section's outputs, so the prose cannot
drift from them either. ``python tests/test_resnet_figures_page.py --write`` rewrites the outputs on
the page from the code (the prose is left to you).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "resnet-figures.md"
COMMAND = "python -m npresnet.summary"
# A number in prose: digits with thousands commas or a decimal part, not part of a word ("ResNet-50",
# "3x3", "v1.5", "layer4" are names, not figures).
NUMBER = re.compile(r"(?<![\w.,-])\d+(?:,\d{3})*(?:\.\d+)?(?![\w-]|\.\d)")


@dataclass
class Answer:
    section: str  # the question it answers
    kind: str  # "console" or "python"
    source: str  # the command line (without "$ ") or the code
    output: str  # what the page shows
    span: tuple[int, int]  # where the output sits in the page's lines [start, end)


def parse(lines: list[str]) -> tuple[list[Answer], dict[str, list[str]]]:
    """The page's answers, and each section's prose lines (everything outside the code blocks and tables
    that are outputs)."""
    answers: list[Answer] = []
    prose: dict[str, list[str]] = {}
    section, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            prose.setdefault(section, []).append(line)
            i += 1
        elif line.startswith("```"):
            kind = line[3:].strip()
            end = lines.index("```", i + 1)
            body = lines[i + 1 : end]
            if kind == "console" and body and body[0].startswith("$ "):
                if len(body) > 1:
                    answers.append(Answer(section, "console", body[0][2:], "\n".join(body[1:]), (i + 2, end)))
                    i = end + 1
                else:  # the output is the markdown table after the block
                    start = end + 1
                    stop = start
                    while stop < len(lines) and lines[stop].startswith("|"):
                        stop += 1
                    answers.append(Answer(section, "console", body[0][2:], "\n".join(lines[start:stop]), (start, stop)))
                    i = stop
            elif kind == "python":
                text_start = end + 1
                while text_start < len(lines) and not lines[text_start].strip():
                    text_start += 1
                if text_start >= len(lines) or lines[text_start] != "```text":
                    raise AssertionError(
                        f"{PAGE.name} line {end + 1}: a python block must be followed by a "
                        "```text block with its output"
                    )
                text_end = lines.index("```", text_start + 1)
                answers.append(
                    Answer(
                        section,
                        "python",
                        "\n".join(body),
                        "\n".join(lines[text_start + 1 : text_end]),
                        (text_start + 1, text_end),
                    )
                )
                i = text_end + 1
            else:
                prose.setdefault(section, []).extend(body)
                i = end + 1
        else:
            prose.setdefault(section, []).append(line)
            i += 1
    return answers, prose


def run(answer: Answer) -> str:
    """What the answer's command or code prints now."""
    out = io.StringIO()
    if answer.kind == "console":
        if not answer.source.startswith(COMMAND + " "):
            raise AssertionError(f"only `{COMMAND} ...` commands can be checked, got {answer.source!r}")
        from npresnet.summary import main

        with contextlib.redirect_stdout(out):
            assert main(shlex.split(answer.source[len(COMMAND) :])) == 0
    else:
        with contextlib.redirect_stdout(out):
            exec(compile(answer.source, str(PAGE), "exec"), {"__name__": "__page__"})
    return out.getvalue().rstrip("\n")


LINES = PAGE.read_text(encoding="utf-8").splitlines()
ANSWERS, PROSE = parse(LINES)


def test_the_page_answers_the_questions():
    questions = [s for s in PROSE if s.endswith("?")]
    assert len(questions) >= 8, questions
    assert {a.section for a in ANSWERS} >= set(questions), "every question has a command next to it"


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda a: a.source.splitlines()[0][:60])
def test_each_output_on_the_page_is_what_the_command_prints(answer):
    now = run(answer)
    if now != answer.output:
        page, fresh = answer.output.splitlines(), now.splitlines()
        first = next((k for k, (a, b) in enumerate(zip(page, fresh)) if a != b), min(len(page), len(fresh)))
        raise AssertionError(
            f"{PAGE.name}, under {answer.section!r}, line {answer.span[0] + first + 1}: the page says\n"
            f"    {page[first] if first < len(page) else '(nothing)'}\nbut `{answer.source.splitlines()[0]}` "
            f"prints\n    {fresh[first] if first < len(fresh) else '(nothing)'}\n"
            f"(python tests/test_resnet_figures_page.py --write regenerates the outputs)"
        )


@pytest.mark.parametrize("section", [s for s in PROSE if any(a.section == s for a in ANSWERS)])
def test_every_number_in_the_prose_is_in_the_outputs(section):
    figures = {n for a in ANSWERS if a.section == section for n in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", a.output)}
    for line in PROSE[section]:
        for number in NUMBER.findall(line.replace("|", " ")):
            assert number in figures, (
                f"{PAGE.name}, under {section!r}: {number} in the text appears in none of "
                f"the section's outputs: {line.strip()!r}"
            )


def write() -> None:
    """Rewrite every output on the page from the code (the prose stays as it is)."""
    lines = list(LINES)
    for answer in sorted(ANSWERS, key=lambda a: a.span[0], reverse=True):
        start, stop = answer.span
        lines[start:stop] = run(answer).splitlines()
    temporary = PAGE.with_name(f".{PAGE.name}.{os.getpid()}.tmp")  # atomic: the page is whole or untouched
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, PAGE)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_resnet_figures_page.py --write")
    write()
