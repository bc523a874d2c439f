"""``python -m npresnet.gradcheck --model MODEL``: gradient-check a whole model or your own layer from the shell.

MODEL is a model name (``resnet20``, ``resnet18``, ... see ``npresnet.models``) or
``package.module:Name``, where Name is a Module class (or a function returning a Module) called
with no arguments. The check is ``npresnet.testing.check_module`` on a float64 copy: drawn inputs,
constant parameters replaced, a random upstream gradient. It prints one line per checked array::

    python -m npresnet.gradcheck --model resnet20 --mode directional
    python -m npresnet.gradcheck --model mylayers:SqueezeExcite --input-shape 2,8,4,4

Exit status: 0 passed, 1 the check failed (the failing arrays are described), 2 bad arguments
(argparse's usage line and ``error: ...``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from typing import Any

from ..commands import EXIT_OPTIONS, add_model, command_parser, deprecated_option, deprecation_note, shape_type
from ..models import CIFAR_MODELS, IMAGENET_MODELS, get_model
from ..nn import Module

#: Full mode runs 2 forward passes per checked element; beyond this many elements it is refused.
FULL_MODE_LIMIT = 20_000
DEFAULT_SHAPES = {
    **{name: (2, 3, 32, 32) for name in CIFAR_MODELS},
    **{name: (2, 3, 64, 64) for name in IMAGENET_MODELS},
}


class UsageError(Exception):
    """A bad argument: reported as argparse reports one (the usage line, ``error: ...``), exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "gradcheck",
        "Gradient-check a whole model or your own layer against finite differences (on a float64 copy, "
        "with drawn inputs and a random upstream gradient) and print a line per array. MODEL is a model "
        "name (" + ", ".join([*CIFAR_MODELS][:3]) + ", resnet18, ...) or package.module:Name (a Module "
        "class or a function returning one, called with no arguments).",
        examples=[
            "python -m npresnet.gradcheck --model resnet20 --mode directional",
            "python -m npresnet.gradcheck --model mylayers:SqueezeExcite --input-shape 2,8,4,4",
        ],
        exit_status=["0  every array passed", "1  the check failed (the failing arrays are described)", EXIT_OPTIONS],
    )
    add_model(p, many=False, help="resnet20, ... or package.module:Name")
    p.add_argument("positional_model", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)  # 0.1's spelling
    p.add_argument(
        "--mode",
        choices=["full", "directional"],
        default="full",
        help="full: every element (small layers); directional: one random direction per array "
        "(whole models). Default: full",
    )
    p.add_argument(
        "--input-shape",
        type=shape_type(),
        metavar="N,C,H,W",
        help="input shape, e.g. 2,3,32,32 (default for a named model: 2,3,32,32 for CIFAR, 2,3,64,64 "
        "for ImageNet models; required for package.module:Name, any number of sizes)",
    )
    p.add_argument("--eval", action="store_true", help="check the module in eval mode (default: training mode)")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, the inputs and the check (default 0)")
    p.add_argument("--fd-step", type=float, default=1e-6, help="finite-difference step h (default 1e-6)")
    deprecated_option(p, "--eps", "--fd-step", dest="fd_step", type=float)
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    return p


def load_module(spec: str, seed: int) -> Module:
    """A model by name, or ``package.module:Name`` imported and called with no arguments."""
    if ":" not in spec:
        try:
            return get_model(spec, seed=seed)
        except ValueError as exc:
            raise UsageError(f"{exc} (or give package.module:Name for your own Module)") from None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected package.module:Name, got {spec!r}")
    try:
        source = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} from {spec!r}: {exc}") from None
    try:
        factory: Any = source
        for part in attribute.split("."):
            factory = getattr(factory, part)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(factory):
        raise UsageError(f"{spec} is a {type(factory).__name__}, not a Module class or a function returning one")
    try:
        module = factory()
    except TypeError as exc:
        raise UsageError(f"{spec}() needs arguments ({exc}); wrap it in a function that takes none") from None
    if not isinstance(module, Module):
        raise UsageError(f"{spec}() returned a {type(module).__name__}, not an npresnet.nn.Module")
    return module


def _input_shape(args: argparse.Namespace) -> tuple[int, ...]:
    if args.input_shape is None:
        if args.model not in DEFAULT_SHAPES:
            raise UsageError(f"--input-shape is required for {args.model} (e.g. --input-shape 2,3,8,8)")
        return DEFAULT_SHAPES[args.model]
    return tuple(args.input_shape)


def _old_input_shape(argv: list[str]) -> list[str]:
    """0.1's ``--input-shape 2 3 32 32`` (sizes as separate words) as ``--input-shape 2,3,32,32``, with the
    deprecation note; other arguments unchanged."""
    if "--input-shape" not in argv:
        return argv
    at = argv.index("--input-shape") + 1
    end = at
    while end < len(argv) and argv[end].lstrip("-").isdigit():
        end += 1
    if end - at < 2:
        return argv
    joined = ",".join(argv[at:end])
    deprecation_note(f"--input-shape {' '.join(argv[at:end])}", f"--input-shape {joined}")
    return [*argv[:at], joined, *argv[end:]]


def run(args: argparse.Namespace) -> int:
    """Check the model; print the table; 0 if it passed, 1 if not. Bad arguments raise UsageError."""
    from ..testing import check_module  # npresnet.testing imports this package: import it late

    if not args.fd_step > 0 or args.atol < 0 or args.rtol < 0:
        raise UsageError(
            f"--fd-step must be positive and --atol, --rtol non-negative, got {args.fd_step}, {args.atol}, {args.rtol}"
        )
    module = load_module(args.model, args.seed).train(not args.eval)
    shape = _input_shape(args)
    if args.mode == "full":
        elements = sum(p.size for p in module.parameters() if p.requires_grad) + math.prod(shape)
        if elements > FULL_MODE_LIMIT:
            raise UsageError(
                f"full mode runs 2 forward passes per element, and {args.model} with input {shape} has "
                f"{elements:,} (input and parameters): use --mode directional (2 passes per array)"
            )
    print(f"gradcheck {args.model}: input {shape}, {'eval' if args.eval else 'training'} mode, seed {args.seed}")
    start = time.perf_counter()
    try:
        report = check_module(
            module,
            shape,
            mode=args.mode,
            seed=args.seed,
            eps=args.fd_step,
            atol=args.atol,
            rtol=args.rtol,
            raise_exception=False,
        )
    except (ValueError, TypeError) as exc:  # e.g. an input shape the model cannot take
        raise UsageError(f"{args.model} on input {shape}: {exc}") from None
    print(report)
    print(f"{len(report.arrays)} array(s) checked in {time.perf_counter() - start:.1f} s")
    if report.passed:
        return 0
    for a in report.arrays:
        if not a.allclose:
            print("\n" + a.describe(report.atol, report.rtol))
    if all(a.allclose for a in report.arrays):
        print("\nonly kinks (a ReLU input or a max-pool tie within eps): rerun with another --seed")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_old_input_shape(list(sys.argv[1:] if argv is None else argv)))
    if args.positional_model is not None:
        if args.model is not None:
            parser.error(f"name the model once: --model {args.model}, not also {args.positional_model}")
        deprecation_note(f"the positional MODEL ({args.positional_model})", f"--model {args.positional_model}")
        args.model = args.positional_model
    if args.model is None:
        parser.error("the following arguments are required: --model (a model name or package.module:Name)")
    try:
        return run(args)
    except UsageError as exc:
        parser.error(str(exc))
