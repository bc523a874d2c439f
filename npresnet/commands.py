"""The command-line vocabulary every ``python -m npresnet.<command>`` shares, and ``python -m npresnet``.

One spelling per idea, in every command that has the idea:

* ``--model NAME`` names the model (``--model resnet18 resnet50`` where a command takes several);
* ``--input-shape N,C,H,W`` is the input's shape, comma-separated (``bench`` keeps ``--batch`` and
  ``--size`` as shorthands for N and H = W);
* ``--seed``, ``--threads``, ``--dtype`` mean the same wherever they appear; no flag means two things
  (bench's untimed runs are ``--warmup-runs``, train's ``--warmup`` is the learning-rate warm-up;
  gradcheck's finite-difference step is ``--fd-step``, train's ``--eps`` is Adam's epsilon; bench's
  ``--steps`` names the steps it times, gradcheck's ``--mode`` how it checks).

A mistake in the options is argparse's error: the usage line, then ``PROG: error: MESSAGE`` (with a
hint where one helps), exit status 2. Every ``--help`` ends with examples and the exit statuses.
The spellings of release 0.1 (:data:`DEPRECATED`) still work in this release, each with a one-line
note on stderr naming the new one.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "COMMANDS",
    "DEPRECATED",
    "ExamplesFormatter",
    "PARSERS",
    "get_parser",
    "reference_markdown",
    "add_model",
    "command_parser",
    "deprecated_option",
    "deprecation_note",
    "main",
    "parse_shape",
    "shape_type",
]

#: name -> (module run by ``python -m``, what it does). ``python -m npresnet`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("npresnet.demo", "one residual block's forward and backward by hand, checked against PyTorch"),
    "learn": ("npresnet.learn", "exercises: write each layer's backward yourself; a grader names the mistake"),
    "summary": ("npresnet.summary", "a model's layers, parameters, MACs and memory; several side by side"),
    "gradcheck": ("npresnet.gradcheck", "gradient-check a model or your own layer against finite differences"),
    "bench": ("npresnet.bench", "time forward and training steps, against PyTorch with --compare torch"),
    "train": ("npresnet.train", "train a ResNet (digits, CIFAR-10, an image folder), resumable, on MPI too"),
    "degradation": (
        "npresnet.experiments.degradation",
        "plain vs residual networks on digits: the paper's Figure 6 in miniature",
    ),
}

#: name -> "module:function" returning the command's parser (docs/commands.md is generated from them).
PARSERS: dict[str, str] = {
    "demo": "npresnet.demo:parser",
    "learn": "npresnet.learn.cli:_parser",
    "summary": "npresnet.summary.cli:parser",
    "gradcheck": "npresnet.gradcheck.cli:build_parser",
    "bench": "npresnet.bench.cli:build_parser",
    "train": "npresnet.training.cli:build_parser",
    "degradation": "npresnet.experiments.degradation:_parser",
}

#: The release after which the deprecated spellings stop working.
REMOVED_IN = "0.3.0"

#: (command, old spelling, new spelling): the spellings of release 0.1 that still work in this release.
DEPRECATED: list[tuple[str, str, str]] = [
    ("bench", "--models NAME ...", "--model NAME ..."),
    ("bench", "--warmup N", "--warmup-runs N"),
    ("bench", "--mode forward train", "--steps forward train"),
    ("summary", "MODEL ... (positional)", "--model MODEL ..."),
    ("gradcheck", "MODEL_OR_MODULE_PATH (positional)", "--model MODEL_OR_MODULE_PATH"),
    ("gradcheck", "--input-shape 2 3 32 32", "--input-shape 2,3,32,32"),
    ("gradcheck", "--eps H", "--fd-step H"),
]

EXIT_OPTIONS = "2  a mistake in the options (the usage line and 'error: ...' on stderr)"


def deprecation_note(old: str, new: str) -> None:
    """One line on stderr: ``old`` still works in this release; ``new`` is the spelling to use."""
    print(f"note: {old} is deprecated, use {new} (the old spelling goes in npresnet {REMOVED_IN})", file=sys.stderr)


class ExamplesFormatter(argparse.HelpFormatter):
    """Every npresnet command's help formatter (``python -m npresnet.learn`` too): argparse's, except
    that a paragraph with indented lines (examples, exit statuses) keeps its line breaks; other
    paragraphs are filled as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") for line in lines[1:]):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(paragraphs)


def command_parser(
    command: str, description: str, examples: Sequence[str], exit_status: Sequence[str]
) -> argparse.ArgumentParser:
    """The parser of ``python -m npresnet.<command>``: its description, then examples and exit
    statuses at the end of ``--help``."""
    module = COMMANDS[command][0]
    epilog = (
        "examples:\n"
        + "\n".join(f"  {example}" for example in examples)
        + "\n\nexit status:\n"
        + "\n".join(f"  {line}" for line in exit_status)
    )
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, epilog=epilog, formatter_class=ExamplesFormatter
    )


def parse_shape(value: str, dims: int | None = None) -> tuple[int, ...]:
    """``"2,3,32,32"`` -> (2, 3, 32, 32): positive integers separated by commas (``dims`` of them if
    given). Raises ``argparse.ArgumentTypeError`` naming what was expected and what came."""
    expected = (
        "N,C,H,W, the batch first, like 1,3,224,224" if dims == 4 else "sizes separated by commas, like 2,3,32,32"
    )
    try:
        shape = tuple(int(s) for s in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}; got {value!r}") from None
    if dims is not None and len(shape) != dims:
        raise argparse.ArgumentTypeError(
            f"expected {expected} ({dims} values); got {value!r} ({len(shape)} value{'s' if len(shape) != 1 else ''})"
        )
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"every size must be at least 1; got {value!r}")
    return shape


def shape_type(dims: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type`` for ``--input-shape``."""

    def convert(value: str) -> tuple[int, ...]:
        return parse_shape(value, dims)

    convert.__name__ = "input shape"  # argparse names the type in its "invalid ... value" message
    return convert


def add_model(parser: argparse.ArgumentParser, *, many: bool, default: Any = None, help: str) -> None:
    """``--model NAME`` (``--model NAME [NAME ...]`` where the command takes several)."""
    parser.add_argument(
        "--model",
        nargs="+" if many else None,
        default=default,
        metavar="NAME",
        help=help,
    )


class _DeprecatedOption(argparse.Action):
    """An old spelling: stores like the new option and prints the one-line deprecation note."""

    def __init__(
        self, option_strings: list[str], dest: str, new: str, convert: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> None:
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        deprecation_note(str(option_string), self.new)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def deprecated_option(
    parser: argparse.ArgumentParser,
    old: str,
    new: str,
    dest: str,
    convert: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> None:
    """Accept ``old`` (hidden from ``--help``) as a deprecated spelling of the option ``new``."""
    parser.add_argument(
        old,
        dest=dest,
        action=_DeprecatedOption,
        new=new,
        convert=convert,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **kwargs,
    )


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="python -m npresnet",
        description="npresnet's commands. Run one as python -m npresnet COMMAND [OPTIONS] or "
        "python -m npresnet.COMMAND [OPTIONS] (degradation: python -m npresnet.experiments.degradation); "
        "each has --help.",
        epilog=f"commands:\n{listing}\n\nexamples:\n  python -m npresnet demo\n"
        "  python -m npresnet summary --model resnet50\n  python -m npresnet --version\n\n"
        f"exit status:\n  0  the list, or the command's own status\n  {EXIT_OPTIONS}",
        formatter_class=ExamplesFormatter,
    )
    p.add_argument("--version", action="version", version=f"npresnet {__version__}")
    p.add_argument(
        "command", nargs="?", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS)
    )
    p.add_argument(
        "arguments", nargs=argparse.REMAINDER, help="the command's options (see python -m npresnet COMMAND --help)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m npresnet``: the list of commands; ``python -m npresnet COMMAND ...`` runs one."""
    args = _parser().parse_args(argv)
    if args.command is None:
        print(_listing())
        return 0
    import runpy

    module = COMMANDS[args.command][0]
    sys.argv = [f"python -m {module}", *args.arguments]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def _listing() -> str:
    from . import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [f"npresnet {__version__}: ResNets in NumPy, every backward by hand. Commands:", ""]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += [
        "",
        "Run one as python -m npresnet COMMAND [OPTIONS]; each has --help with examples.",
        "(Also: python -m npresnet.COMMAND; degradation is python -m npresnet.experiments.degradation.)",
    ]
    return "\n".join(lines)


def get_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``python -m npresnet.<command>`` (imported on demand)."""
    import importlib

    module, _, function = PARSERS[command].partition(":")
    parser: argparse.ArgumentParser = getattr(importlib.import_module(module), function)()
    return parser


def _invocation(action: argparse.Action) -> str:
    """``--model NAME [NAME ...]``: the option as its usage line writes it."""
    formatter = argparse.HelpFormatter("")
    if not action.option_strings:
        return formatter._format_args(action, action.dest)  # noqa: SLF001  (the metavar if set)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    args = formatter._format_args(action, action.dest.upper())  # noqa: SLF001  (the metavar if set)
    return ", ".join(f"{flag} {args}" for flag in action.option_strings)


def reference_markdown() -> str:
    """docs/commands.md: every command's options, examples and exit statuses, from the parsers themselves."""
    lines = [
        "# Commands",
        "",
        "<!-- Generated from the commands' parsers (npresnet.commands.reference_markdown) by",
        "`python tests/test_commands.py --write`; the tests fail when this page differs from what they give. -->",
        "",
        "Every command is `python -m npresnet.COMMAND` (or `python -m npresnet COMMAND`); `python -m npresnet`",
        "lists them and `python -m npresnet --version` prints the version. They share one vocabulary:",
        "`--model` names the model(s), `--input-shape N,C,H,W` the input (comma-separated), and `--seed`,",
        "`--threads`, `--dtype`, `--out` mean the same wherever they appear. A mistake in the options is",
        "argparse's error: the usage line, then `PROG: error: MESSAGE`, exit status 2.",
        "",
        " | ".join(f"[{name}](#{name})" for name in COMMANDS),
    ]
    for name, (module, what) in COMMANDS.items():
        parser = get_parser(name)
        lines += ["", f"## {name}", "", f"`python -m {module}`: {what}.", ""]
        lines += [" ".join(parser.description.split()) if parser.description else "", ""]
        lines += ["| option | meaning |", "|---|---|"]
        for action in parser._actions:  # noqa: SLF001
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            meaning = " ".join((action.help or "").replace("%%", "%").split())
            if action.choices is not None and "{" not in _invocation(action):
                meaning += (" " if meaning else "") + "(one of: " + ", ".join(map(str, action.choices)) + ")"
            lines.append(f"| `{_invocation(action)}` | {meaning.replace('|', '/')} |")
        for sub_action in parser._actions:  # noqa: SLF001
            if isinstance(sub_action, argparse._SubParsersAction):  # noqa: SLF001
                for sub in sub_action.choices.values():
                    rows = [
                        f"| `{_invocation(a)}` | {' '.join((a.help or '').split()).replace('|', '/')} |"
                        for a in sub._actions  # noqa: SLF001
                        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)  # noqa: SLF001
                    ]
                    lines += ["", f"`{sub.prog}`:", ""]
                    lines += ["| option | meaning |", "|---|---|", *rows] if rows else ["(no options)"]
        epilog = parser.epilog or ""
        examples, _, statuses = epilog.partition("\n\nexit status:\n")
        lines += ["", "Examples:", "", "```text"]
        lines += [line.strip() for line in examples.splitlines()[1:]]
        lines += ["```", "", "Exit status:", ""]
        lines += [
            f"- {' '.join(line.split())}" if line.lstrip()[:1].isdigit() else f"  {line.strip()}"
            for line in statuses.splitlines()
        ]
    lines += [
        "",
        "## Deprecated spellings",
        "",
        "The spellings of release 0.1 still work in this release, each with a one-line note on stderr; "
        f"they go in {REMOVED_IN}.",
        "",
        "| command | old | new |",
        "|---|---|---|",
    ]
    lines += [f"| {command} | `{old}` | `{new}` |" for command, old, new in DEPRECATED]
    return "\n".join(lines) + "\n"
