"""docs/learn.md's worked example runs: its blocks, top to bottom, in a fresh folder.

A ```python block whose first line is ``# PATH`` is written to PATH (the learner saving their file);
in a ```console block every ``$ python -m npresnet.learn ...`` line runs that command (in-process)
and the lines below it, up to the next ``$``, must appear in its output, in order (a line ending in
``...`` matches any line it begins; a line ``...`` alone skips); ``$ echo $?`` checks the exit
status of the command before it.
"""

from __future__ import annotations

import os
import re
import shlex

from npresnet.learn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "learn.md")


def blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number, lines) of every fenced block."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w+)", lines[i].strip())
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            found.append((match.group(1), i + 2, lines[i + 1 : end]))
            i = end
        i += 1
    return found


def _expect(expected: list[str], output: str, where: str) -> None:
    got = output.splitlines()
    position = 0
    for line in expected:
        if line.strip() == "...":
            continue
        prefix = line[:-3] if line.endswith("...") else None
        for k in range(position, len(got)):
            if got[k].startswith(prefix) if prefix is not None else got[k] == line:
                position = k + 1
                break
        else:
            raise AssertionError(f"{where}: expected the line\n  {line}\nin the output:\n{output}")


def test_the_worked_example_runs_as_shown(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with open(PAGE, encoding="utf-8") as f:
        page = blocks(f.read())
    example = [b for b in page if b[0] in ("console", "python")]
    assert any(language == "console" for language, _, _ in example), "docs/learn.md runs no command"
    status = None
    for language, line, lines in example:
        where = f"docs/learn.md:{line}"
        if language == "python":
            assert lines[0].startswith("# "), f"{where}: a python block starts with '# PATH', the file it is"
            os.makedirs(os.path.dirname(lines[0][2:]) or ".", exist_ok=True)
            with open(lines[0][2:], "w", encoding="utf-8") as f:
                f.write("\n".join(lines[1:]) + "\n")
            continue
        commands: list[tuple[str, list[str]]] = []
        for text in lines:
            if text.startswith("$ "):
                commands.append((text[2:], []))
            else:
                commands[-1][1].append(text)
        for command, expected in commands:
            if command == "echo $?":
                assert [str(status)] == [e for e in expected if e], f"{where}: exit status {status}, not {expected}"
                continue
            words = shlex.split(command)
            assert words[:3] == ["python", "-m", "npresnet.learn"], f"{where}: only learn commands run: {command}"
            status = main(words[3:])
            captured = capsys.readouterr()
            _expect(expected, captured.out + captured.err, f"{where}: {command}")
    assert sorted(os.listdir(tmp_path)) == ["exercises"], "the commands wrote outside the learner's folder"
