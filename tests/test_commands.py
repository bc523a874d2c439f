"""One vocabulary for every command (npresnet.commands), and docs/commands.md generated from the parsers.

* docs/commands.md is what ``npresnet.commands.reference_markdown()`` gives now
  (``python tests/test_commands.py --write`` rewrites it);
* every command's ``--help`` ends with examples and exit statuses, and every example parses;
* a wrong flag is argparse's error (usage line, ``PROG: error: ...``) with exit status 2, everywhere;
* ``--model`` and ``--input-shape N,C,H,W`` are spelled the same in every command that takes them, and
  no flag means two things in two commands;
* the spellings of release 0.1 still work, each with its one-line deprecation note;
* ``python -m npresnet`` lists the commands and prints ``--version``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import npresnet
from npresnet.commands import COMMANDS, DEPRECATED, get_parser, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "commands.md"

# The flags more than one command has, and the one thing each means everywhere.
SHARED = {
    "--model": "the model(s)",
    "--input-shape": "the input's shape, N,C,H,W",
    "--seed": "the random seed",
    "--threads": "threads for BLAS, Numba and torch",
    "--dtype": "float32 or float64",
    "--backend": "numpy or cupy",
    "--batch": "images per step",
    "--out": "the folder the command writes to",
    "--epochs": "passes over the training set",
    "--train-limit": "the first N training images",
    "--progress": "the progress display",
    "--autotune": "the kernel choice, measure or fixed",
    "--no-autotune-cache": "no cache of measured winners in this process",
}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd or ROOT, env=env
    )


def test_the_commands_page_is_what_the_parsers_give():
    assert PAGE.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/commands.md is stale: run python tests/test_commands.py --write"
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_has_examples_and_exit_statuses_and_every_example_parses(command):
    parser = get_parser(command)
    text = parser.format_help()
    assert "\nexamples:\n" in text and "\nexit status:\n" in text, text
    assert "  2  a mistake in the options" in text or "2    a mistake in the options" in text
    examples = [line.strip() for line in text.split("\nexamples:\n")[1].split("\n\n")[0].splitlines()]
    assert examples
    prog = f"python -m {COMMANDS[command][0]}"
    for example in examples:
        words = shlex.split(example, comments=True)
        start = " ".join(words).index(prog)  # an example may start with mpiexec -n 2
        arguments = shlex.split(" ".join(words)[start + len(prog) :])
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            parser.parse_args(arguments)  # a mistake exits 2 here
        assert "deprecated" not in errors.getvalue(), f"{example}: {errors.getvalue()}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_wrong_flag_is_the_same_argparse_error_and_exit_2_everywhere(command):
    module = COMMANDS[command][0]
    done = _run("-m", module, "--bogus")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""  # nothing ran (the demo used to run whole and exit 0)
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: python -m {module} "), done.stderr
    if command == "learn":  # subcommands first: argparse asks for one
        assert lines[-1] == f"python -m {module}: error: the following arguments are required: COMMAND"
    else:
        assert lines[-1] == f"python -m {module}: error: unrecognized arguments: --bogus", done.stderr


def test_model_and_input_shape_are_spelled_the_same_and_no_flag_means_two_things():
    owners: dict[str, list[str]] = {}
    for command in COMMANDS:
        for action in get_parser(command)._actions:
            if action.help == "==SUPPRESS==":  # a deprecated spelling
                continue
            for flag in action.option_strings:
                owners.setdefault(flag, []).append(command)
    for flag, commands in owners.items():
        if flag not in ("-h", "--help") and len(commands) > 1:
            assert flag in SHARED, f"{flag} is an option of {commands}: one meaning everywhere, or two names"
    assert set(owners["--model"]) == {"summary", "gradcheck", "bench", "train"}  # demo builds its own block
    assert set(owners["--input-shape"]) == {"demo", "summary", "gradcheck", "bench"}  # train: the data set's
    for command in ("demo", "summary", "gradcheck", "bench"):
        action = next(a for a in get_parser(command)._actions if "--input-shape" in a.option_strings)
        assert action.metavar == "N,C,H,W", (command, action.metavar)


def test_input_shape_parses_one_way_everywhere(capsys):
    for command in ("demo", "summary", "bench"):
        parser = get_parser(command)
        extra = ["--model", "resnet20"] if command != "demo" else []
        assert tuple(parser.parse_args([*extra, "--input-shape", "2,3,32,32"]).input_shape) == (2, 3, 32, 32)
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([*extra, "--input-shape", "2,3,x,32"])
        assert stop.value.code == 2
        assert "expected N,C,H,W, the batch first, like 1,3,224,224; got '2,3,x,32'" in capsys.readouterr().err


def test_old_spellings_still_work_with_a_one_line_note(tmp_path):
    from npresnet.bench.cli import parse_args

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        args = parse_args(["--models", "resnet20", "--warmup", "2", "--mode", "forward"])
    assert (args.models, args.warmup, args.mode) == (["resnet20"], 2, ["forward"])
    notes = errors.getvalue().splitlines()
    assert notes == [
        "note: --models is deprecated, use --model (the old spelling goes in npresnet 0.3.0)",
        "note: --warmup is deprecated, use --warmup-runs (the old spelling goes in npresnet 0.3.0)",
        "note: --mode is deprecated, use --steps (the old spelling goes in npresnet 0.3.0)",
    ]
    done = _run("-m", "npresnet.summary", "resnet20", "--no-memory", "--depth", "0", cwd=tmp_path)
    assert done.returncode == 0 and "Total params: 269,722" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines() == [
        "note: the positional MODEL is deprecated, use --model resnet20 (the old spelling goes in npresnet 0.3.0)"
    ]
    done = _run(
        "-m", "npresnet.gradcheck", "resnet20", "--input-shape", "2", "3", "8", "8", "--eps", "1e-6",
        "--mode", "directional", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gradcheck resnet20: input (2, 3, 8, 8)" in done.stdout
    notes = done.stderr.strip().splitlines()
    assert len(notes) == 3 and all(n.startswith("note: ") and "is deprecated, use" in n for n in notes), notes
    assert any("--input-shape 2,3,8,8" in n for n in notes) and any("--fd-step" in n for n in notes)
    assert {command for command, _, _ in DEPRECATED} <= set(COMMANDS)


def test_python_dash_m_npresnet_lists_the_commands_and_the_version():
    done = _run("-m", "npresnet")
    assert done.returncode == 0, done.stderr
    for name, (_, what) in COMMANDS.items():
        assert f"  {name}" in done.stdout and what in done.stdout
    done = _run("-m", "npresnet", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"npresnet {npresnet.__version__}"
    done = _run("-m", "npresnet", "demo", "--bogus")
    assert done.returncode == 2 and done.stderr.strip().endswith("error: unrecognized arguments: --bogus")


if __name__ == "__main__":  # python tests/test_commands.py --write: regenerate docs/commands.md
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_commands.py --write")
    PAGE.write_text(reference_markdown(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
