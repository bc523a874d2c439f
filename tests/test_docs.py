"""The README and every page of docs/ run: their code blocks and commands, and the links between them.

Pages with their own runner keep it (``OWN_TESTS``); every other page is run here, top to bottom, in
a fresh folder (``tmp_path``), as a reader would:

* a ```python block runs in the page's one namespace (later blocks use names defined earlier); the
  lines of the ```text block right after it must each be a line it prints. A block whose first line
  names a file (``# exercises/linear.py`` or ``# file: mylayers.py``) is written to that file instead;
* a ```console block's ``$ command`` lines run, and each line shown under one must be a line of its
  output; a command must exit 0, or with the status shown under a ``$ echo $?`` right after it;
* a ```bash block's lines run one by one (``\\`` continues a line). ``pip install`` is not run (the
  tests run in the installed environment); the extras it names must exist in pyproject.toml.

A shown line ending in ``...`` matches any line that starts so. A block right after
``<!-- output: machine-dependent -->`` is compared by its shape only: numbers match any number and
runs of spaces any run of spaces. Another comment right above a block says when it runs:
``<!-- docs-test: slow -->`` (with ``-m slow``), ``<!-- docs-test: gpu -->`` (with ``-m gpu``, on a
CUDA device) or ``<!-- docs-test: skip (REASON) -->`` (never; the reason is required and shown).
Commands that name a file of the repository (``bench/``, ``tests/``, ``docs/``) run in its root.

The README also keeps its promises: at most 160 lines, the two commands exactly, no durations
outside the generated speed table and the machine-dependent outputs; docs/index.md links every page.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OWN_TESTS = {  # pages whose blocks another test runs, with rules of its own
    "docs/tutorial.md": "tests/test_tutorial.py",
    "docs/testing-your-layer.md": "tests/test_testing_docs.py",
    "docs/learn.md": "tests/test_learn_docs.py",  # the worked example, run in a fresh folder
    "docs/resnet-figures.md": "tests/test_resnet_figures_page.py",
    "docs/commands.md": "tests/test_commands.py",  # generated; its examples are parsed there
}
BENCH_COMMAND = 'pip install -e ".[bench]" && python -m npresnet.bench'
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test,dev]" && python -m pytest -q -m "not slow"'
MARKER = re.compile(r"<!-- (docs-test|output): ([^>]*?) -->")
FILE = re.compile(r"#\s*(?:file:\s*)?([\w./-]+\.py)\s*")  # a block's first line naming the file it is
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass
class Block:
    lang: str
    line: int  # the first line of the code, 1-based
    code: str
    when: str  # "always", "slow", "gpu" or "skip (reason)"
    machine_dependent: bool


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```") and line.strip() != "```":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            when, machine_dependent = "always", False
            k = i - 1
            while k >= 0 and (match := MARKER.fullmatch(lines[k].strip())):
                if match.group(1) == "docs-test":
                    when = match.group(2)
                else:
                    machine_dependent = match.group(2) == "machine-dependent"
                k -= 1
            blocks.append(Block(line.strip()[3:], i + 2, "\n".join(lines[i + 1 : end]), when, machine_dependent))
            i = end
        i += 1
    return blocks


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def shape(line: str) -> str:
    return " ".join(NUMBER.sub("#", line).split())


def assert_shows(expected: list[str], output: str, where: str, machine_dependent: bool) -> None:
    printed = [line.rstrip() for line in output.splitlines()]
    if machine_dependent:
        printed = [shape(line) for line in printed]
    for want in (w.rstrip() for w in expected if w.strip()):
        want = shape(want) if machine_dependent else want
        if want.endswith("..."):
            ok = any(line.startswith(want[:-3].rstrip()) for line in printed)
        else:
            ok = want in printed
        assert ok, f"{where}: the page shows\n  {want}\nbut the output was:\n{output[-4000:]}"


def logical_lines(code: str) -> list[str]:
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def check_pip(command: str, where: str) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extras in re.findall(r"\.\[([\w,-]+)\]", command):
        for extra in extras.split(","):
            assert re.search(rf"(?m)^{re.escape(extra)}\s*=", pyproject), f"{where}: no extra {extra!r} in pyproject"


def run_command(command: str, folder: Path, where: str, status: int = 0) -> str:
    """Run one shell line (its ``pip install`` parts checked, not run) that must exit with ``status``;
    returns stdout + stderr."""
    parts = [part.strip() for part in command.split("&&")]
    for part in parts:
        if part.startswith("pip install"):
            check_pip(part, where)
    rest = " && ".join(part for part in parts if not part.startswith("pip install"))
    if not rest:
        return ""
    if rest.startswith("mpiexec") and shutil.which("mpiexec", path=_path()) is None:
        pytest.skip(f"{where}: mpiexec is not installed (pip install -e '.[mpi]')")
    cwd = ROOT if re.search(r"(^|\s)(bench|tests|docs)/", rest) else folder
    env = {**os.environ, "PATH": _path()}
    done = subprocess.run(["bash", "-c", rest], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == status, (
        f"{where}: `{rest}` exited {done.returncode}, not {status}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )
    return done.stdout + done.stderr


def _path() -> str:
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def run_page(page: Path, tier: str, folder: Path, monkeypatch) -> list[str]:
    """Run the page's blocks that run in ``tier`` ("fast", "slow" or "gpu"), in order; returns the
    blocks left out, with why."""
    blocks = parse(page.read_text(encoding="utf-8"))
    runs_in = {"fast": {"always"}, "slow": {"always", "slow"}, "gpu": {"always", "slow", "gpu"}}[tier]
    namespace: dict = {"__name__": "__docs__"}
    monkeypatch.chdir(folder)
    left_out = []
    for index, block in enumerate(blocks):
        where = f"{name(page)}:{block.line}"
        if block.lang not in ("python", "console", "bash"):
            continue
        if block.when not in runs_in:
            left_out.append(f"{where} ({block.when})")
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        file = FILE.fullmatch(block.code.splitlines()[0]) if block.lang == "python" and block.code else None
        if file is not None:  # a file the reader writes, not code to run
            target = folder / file.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code + "\n", encoding="utf-8")
        elif block.lang == "python":
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                try:
                    exec(compile(block.code, where, "exec"), namespace)
                except Exception as error:
                    raise AssertionError(f"{where}: {type(error).__name__}: {error}") from error
            if (
                following is not None
                and following.lang == "text"
                and following.line <= block.line + len(block.code.splitlines()) + 4
            ):
                assert_shows(following.code.splitlines(), printed.getvalue(), where, block.machine_dependent)
        elif block.lang == "console":
            lines = block.code.splitlines()
            assert lines and lines[0].startswith("$ "), f"{where}: a console block starts with '$ command'"
            # [(command, the lines shown under it)]; `$ echo $?` right after a command shows its exit status
            steps: list[tuple[str, list[str]]] = []
            for line in lines:
                if line.startswith("$ "):
                    steps.append((line[2:].strip(), []))
                else:
                    steps[-1][1].append(line)
            for number, (command, shown) in enumerate(steps):
                if command == "echo $?":
                    continue
                after = steps[number + 1] if number + 1 < len(steps) else None
                status = int(after[1][0]) if after is not None and after[0] == "echo $?" else 0
                output = run_command(command, folder, where, status)
                assert_shows(shown, output, where, block.machine_dependent)
        else:
            for line in logical_lines(block.code):
                run_command(line, folder, where)
    return left_out


def _cases(tier: str) -> list[str]:
    found = []
    for page in pages():
        if name(page) in OWN_TESTS:
            continue
        whens = {b.when for b in parse(page.read_text(encoding="utf-8")) if b.lang in ("python", "console", "bash")}
        if tier == "fast" or tier in whens:
            found.append(name(page))
    return found


@pytest.mark.parametrize("page", _cases("fast"))
def test_page_runs(page, tmp_path, monkeypatch, capsys):
    left_out = run_page(ROOT / page, "fast", tmp_path, monkeypatch)
    with capsys.disabled():
        if left_out:
            print(f"\n{page}: not run in the fast suite: {'; '.join(left_out)}")


@pytest.mark.slow
@pytest.mark.parametrize("page", _cases("slow"))
def test_page_runs_with_its_slow_blocks(page, tmp_path, monkeypatch):
    run_page(ROOT / page, "slow", tmp_path, monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("page", _cases("gpu"))
def test_page_runs_with_its_gpu_blocks(page, tmp_path, monkeypatch):
    from npresnet import backend

    try:
        backend.require_cupy()
    except RuntimeError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    run_page(ROOT / page, "gpu", tmp_path, monkeypatch)


def test_every_page_is_run_by_a_test_and_every_marker_is_known():
    for page, test in OWN_TESTS.items():
        assert (ROOT / page).is_file() and (ROOT / test).is_file(), (page, test)
    for page in pages():
        for block in parse(page.read_text(encoding="utf-8")):
            where = f"{name(page)}:{block.line}"
            assert block.when in ("always", "slow", "gpu") or re.fullmatch(r"skip \(.{10,}\)", block.when), (
                f"{where}: unknown marker {block.when!r} (slow, gpu, or skip (a reason))"
            )
            if block.lang in ("bash", "console", "sh", "shell"):
                assert block.lang != "sh" and block.lang != "shell", f"{where}: use ```bash or ```console"


def test_docs_index_links_every_page_and_every_link_resolves():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", index))
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert page.name in linked, f"docs/index.md does not link {page.name}"
    assert "(docs/index.md)" in README.read_text(encoding="utf-8")
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\((?!https?:|#|mailto:)([^)#\s]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{name(page)} links {target}, which does not exist"


def test_the_readme_keeps_its_promises():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160, f"README.md has {len(text.splitlines())} lines (at most 160)"
    commands = [line.strip() for block in parse(text) if block.lang == "bash" for line in block.code.splitlines()]
    assert BENCH_COMMAND in commands and TEST_COMMAND in commands, commands
    assert 'python -m pytest -q -m "not slow"' in (ROOT / ".ci" / "run").read_text()  # CI runs the same
    for use in ("Learn backprop", "Benchmark against PyTorch", "gradient-check suites"):
        assert use in text, f"the README does not name the use {use!r}"
    assert text.count("<!-- speed-table:") == 1 and "Measured on " in text  # one table, its machine named


DURATION = re.compile(r"(~|about |takes |in )?\d+(\.\d+)?\s*(s|sec|seconds?|min|minutes?|h|hours?)\b")


def _without_measured_parts(text: str) -> str:
    """The text without the generated speed tables and the blocks marked machine-dependent."""
    text = re.sub(r"<!-- speed-table:.*?<!-- speed-table end -->", "", text, flags=re.DOTALL)
    return re.sub(r"<!-- output: machine-dependent -->\s*```.*?```", "", text, flags=re.DOTALL)


def test_no_duration_is_promised_that_no_recorded_run_measured():
    """A duration told to a user must be measured; the README and the commands' --help state none
    (the speed table's come from the recorded JSON, and machine-dependent outputs are outputs)."""
    from npresnet.commands import COMMANDS, get_parser

    found = DURATION.findall(_without_measured_parts(README.read_text(encoding="utf-8")))
    assert not found, f"README.md states a duration: {found}"
    for command in COMMANDS:
        text = get_parser(command).format_help()
        match = DURATION.search(text)
        assert match is None, f"python -m npresnet.{command} --help states a duration: {match.group(0)!r}"


def test_every_command_a_page_names_in_its_prose_parses():
    """Commands written inline (`python -m npresnet.bench --compare torch`) are not run, but each must
    be a valid command line of this release: its parser accepts it, with no deprecation note."""
    from npresnet.commands import COMMANDS, get_parser

    by_module = {module: command for command, (module, _) in COMMANDS.items()}
    checked = 0
    for page in pages():
        if name(page) == "docs/commands.md":  # generated: its examples are parsed in tests/test_commands.py
            continue
        for line in re.findall(r"`(python -m npresnet[^`]*)`", page.read_text(encoding="utf-8")):
            words = shlex.split(line, comments=True)[2:]
            module = words[0]
            if module == "npresnet" and len(words) > 1 and words[1] in COMMANDS:
                module, words = COMMANDS[words[1]][0], words[1:]
            if (
                len(words) == 1
                or module not in by_module
                or "..." in words
                or any("<" in w or w.isupper() for w in words[1:])
            ):
                continue  # the command's name alone, another module, or a pattern such as COMMAND [OPTIONS]
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                try:
                    get_parser(by_module[module]).parse_args(words[1:])
                except SystemExit as stop:
                    assert stop.code == 0, f"{name(page)}: `{line}` does not parse: {errors.getvalue()}"
            assert "deprecated" not in errors.getvalue(), f"{name(page)}: `{line}`: {errors.getvalue()}"
            checked += 1
    assert checked >= 5, checked  # the check must not pass by finding nothing
