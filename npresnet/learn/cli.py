"""``python -m npresnet.learn``: the commands of the exercise path (see ``npresnet.learn``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources

from ..commands import ExamplesFormatter
from . import progress
from .catalogue import BY_NAME, EXERCISES, Exercise, get

PROG = "python -m npresnet.learn"
EXIT_STATUS = (
    "exit status:\n"
    "  0  success: the check passes, the file was written, the hint or solution shown, training learned\n"
    "  1  the check fails (or the file is not written yet), start found your file already there (it is\n"
    "     never overwritten), solution before your file passes, train refused or did not reach 90%\n"
    "  2  a mistake in the options (the usage line and 'error: ...' on stderr)"
)
EXAMPLES = (
    "examples:\n"
    "  python -m npresnet.learn list\n"
    "  python -m npresnet.learn start linear            # writes exercises/linear.py\n"
    "  python -m npresnet.learn check linear\n"
    "  python -m npresnet.learn hint linear             # one more hint each time\n"
    "  python -m npresnet.learn solution linear         # once your linear.py passes\n"
    "  python -m npresnet.learn train                   # ResNet-20 on the digits with your layers\n"
    "  python -m npresnet.learn check conv --dir ~/my-exercises"
)

_LABELS = {
    "pass": "passes",
    "fail": "fails",
    "not written": "started, not written yet",
    "crash": "raises an error",
    "missing": "not started",
    "not started": "not started",
    "unchecked": "not checked yet",
}


def _text(package: str, exercise: Exercise) -> str:
    return resources.files(f"npresnet.learn.{package}").joinpath(exercise.filename).read_text(encoding="utf-8")


def skeleton(exercise: Exercise) -> str:
    """The text ``start`` writes for ``exercise``."""
    return _text("skeletons", exercise)


def solution(exercise: Exercise) -> str:
    """npresnet's own solution to ``exercise``, as text."""
    return _text("solutions", exercise)


def _positive(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(e.name for e in EXERCISES)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Learn backpropagation by writing it: a path of exercises, each one file you complete "
            f"(in this order: {names}), a grader that says what is wrong, and at the end a ResNet-20 "
            "that trains on the digits with your own layers. docs/learn.md walks through it."
        ),
        epilog=EXAMPLES + "\n\n" + EXIT_STATUS,
        formatter_class=ExamplesFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, takes_name: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES + "\n\n" + EXIT_STATUS,
            formatter_class=ExamplesFormatter,
        )
        if takes_name:
            sub.add_argument("name", metavar="NAME", choices=list(BY_NAME), help=f"the exercise: one of {names}")
        sub.add_argument(
            "--dir",
            metavar="DIR",
            default=progress.DEFAULT_DIR,
            help=f"your folder: your files and the hints shown are kept there (default: {progress.DEFAULT_DIR})",
        )
        return sub

    command("list", "the path of exercises, and which of them pass in your folder", takes_name=False)
    command("start", "write the exercise's skeleton into your folder (never over your own file)")
    command("check", "grade your file: shapes, the forward against npresnet's, the backward against finite differences")
    command("hint", "the next hint for the exercise (one more each time)")
    sub = command("solution", "npresnet's own solution, once your file passes")
    sub.add_argument("--anyway", action="store_true", help="show it even though your file does not pass yet")
    sub = command("train", "train ResNet-20 on the digits with every layer you completed swapped in", takes_name=False)
    sub.add_argument("--epochs", type=_positive, default=None, metavar="N", help="epochs (default: 4)")
    sub.add_argument("--seed", type=int, default=0, help="the seed of the weights and the batches (default: 0)")
    sub.add_argument(
        "--anyway",
        action="store_true",
        help="swap in completed files even if their check fails (see what a wrong backward does to training)",
    )
    return parser


def _list(folder: str) -> int:
    found = progress.statuses(folder)
    width = max(len(e.name) for e in EXERCISES)
    print(f"The path (your folder: {folder}):")
    for number, exercise in enumerate(EXERCISES, 1):
        print(f"  {number:>2}. {exercise.name:<{width}}  {_LABELS[found[exercise.name]]:<25} {exercise.title}")
    upcoming = next((e for e in EXERCISES if found[e.name] != "pass"), None)
    if upcoming is None:
        print(f"\nEvery exercise passes. Now: {PROG} train --dir {folder}")
    elif found[upcoming.name] == "not started":
        print(f"\nNext: {PROG} start {upcoming.name} --dir {folder}")
    else:
        print(f"\nNext: finish {progress.path_of(folder, upcoming)}, then {PROG} check {upcoming.name} --dir {folder}")
    return 0


def _start(exercise: Exercise, folder: str) -> int:
    path = progress.path_of(folder, exercise)
    if os.path.exists(path):
        print(
            f"{path} exists already: it is your work, so it is not overwritten. Carry on with it, "
            f"or move it away to start over.",
            file=sys.stderr,
        )
        return 1
    os.makedirs(folder, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:  # "x": never over a file that appeared meanwhile
        f.write(skeleton(exercise))
    section = f" The tutorial derives it in docs/tutorial.md, section {exercise.tutorial}." if exercise.tutorial else ""
    print(f"wrote {path}: {exercise.title}.{section}")
    print(f"Fill in the TODOs, then: {PROG} check {exercise.name} --dir {folder}")
    return 0


def _check(exercise: Exercise, folder: str) -> int:
    result = progress.check(folder, exercise)
    if result.passed:
        print(f"PASS {exercise.name}: {result.message}")
        later = EXERCISES[EXERCISES.index(exercise) + 1 :]
        if later:
            print(f"next: {PROG} start {later[0].name} --dir {folder}")
        else:
            print(f"That was the last one. Now: {PROG} train --dir {folder}")
        return 0
    heading = {"not written": "NOT WRITTEN YET", "missing": "NOT STARTED"}.get(result.status, "FAIL")
    print(f"{heading} {exercise.name}: {result.message}")
    if result.status == "fail":
        print(f"(stuck? {PROG} hint {exercise.name} --dir {folder})")
    return 1


def _hint(exercise: Exercise, folder: str) -> int:
    number, _ = progress.next_hint(folder, exercise)
    total = len(exercise.hints)
    for shown in range(1, number + 1):
        print(f"Hint {shown} of {total} for {exercise.name}: {exercise.hints[shown - 1]}")
    if number < total:
        print(f"(run it again for hint {number + 1})")
    else:
        print(f"(that was the last hint; {PROG} solution {exercise.name} --anyway shows npresnet's own)")
    return 0


def _solution(exercise: Exercise, folder: str, anyway: bool) -> int:
    if not anyway:
        result = progress.check(folder, exercise)
        if not result.passed:
            print(
                f"{exercise.name}: your file does not pass yet ({_LABELS.get(result.status, result.status)}), so the "
                f"solution stays hidden. {PROG} hint {exercise.name} helps; --anyway shows it regardless.",
                file=sys.stderr,
            )
            return 1
    print(f"# npresnet's solution to {exercise.name} (npresnet/learn/solutions/{exercise.filename})\n")
    print(solution(exercise), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    folder = os.path.expanduser(args.dir)
    if args.command == "list":
        return _list(folder)
    if args.command == "train":
        from .train import main as train

        return train(folder, epochs=args.epochs, seed=args.seed, anyway=args.anyway)
    exercise = get(args.name)
    if args.command == "start":
        return _start(exercise, folder)
    if args.command == "check":
        return _check(exercise, folder)
    if args.command == "hint":
        return _hint(exercise, folder)
    return _solution(exercise, folder, args.anyway)
