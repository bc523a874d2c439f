"""``python -m npresnet.summary MODEL [MODEL ...]``: the report of one model, or several side by side."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from .. import nn
from ..commands import EXIT_OPTIONS, add_model, command_parser, deprecation_note, parse_shape, shape_type
from .record import Summary, summary
from .report import comparison_text, markdown, text, to_json
from .structure import classifier_name


def input_shape(value: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224); anything else is an argparse error naming what it got."""
    return parse_shape(value, 4)


def parser() -> argparse.ArgumentParser:
    p = command_parser(
        "summary",
        "A model's layers, stages, parameters, MACs/FLOPs and measured memory, and the answers to "
        "the usual questions (blocks, weighted layers, parameters without the classifier). "
        "Several models: one table, a column per model.",
        examples=[
            "python -m npresnet.summary --model resnet50",
            "python -m npresnet.summary --model resnet18 resnet34 resnet50 --no-memory",
            "python -m npresnet.summary --model resnet20 --input-shape 128,3,32,32 --format json",
        ],
        exit_status=["0  the report was printed", EXIT_OPTIONS],
    )
    add_model(p, many=True, help="one or more factories of npresnet.models, e.g. resnet50 resnet20")
    p.add_argument("models", nargs="*", metavar="MODEL", help=argparse.SUPPRESS)  # 0.1's spelling: deprecated
    p.add_argument(
        "--input-shape",
        type=shape_type(4),
        default=None,
        metavar="N,C,H,W",
        help="the batch (default 1,3,224,224; 1,3,32,32 for the CIFAR models)",
    )
    p.add_argument(
        "--variant",
        choices=("v1.5", "v1"),
        default=None,
        help="ImageNet ResNets: a Bottleneck's stride on its 3x3 conv (v1.5, torchvision) or its first "
        "1x1 (v1, the paper)",
    )
    p.add_argument(
        "--shortcut",
        choices=("A", "B"),
        default=None,
        help="CIFAR ResNets: option A (zero-padding identity) or B (1x1 projections)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameters and input")
    p.add_argument(
        "--freeze",
        choices=("none", "backbone", "all"),
        default="none",
        help="before counting: backbone = model.requires_grad_(False) then the classifier's "
        "requires_grad_(True) (fine-tuning a new head); all = everything frozen",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="N",
        help="how deep the per-layer table goes, as torchinfo: 0 the whole network, 1 stem layers, "
        "stages and head, 2 blocks, ... (default: every layer)",
    )
    p.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        dest="output_format",
        help="text (default), markdown tables (to paste into notes) or JSON (for scripts and tests)",
    )
    p.add_argument(
        "--no-memory", action="store_true", help="skip the activation measurement (eval-mode forward under no_grad)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    from .. import models

    if args.models:
        if args.model:
            p.error(f"name the models once: --model {' '.join(args.model)}, not also {' '.join(args.models)}")
        deprecation_note("the positional MODEL", f"--model {' '.join(args.models)}")
        args.model = args.models
    if not args.model:
        p.error("the following arguments are required: --model (e.g. --model resnet50)")
    args.models = args.model

    cifar = models.CIFAR_MODELS
    known = {**models.IMAGENET_MODELS, **cifar}
    for name in args.models:
        problem = models.unknown_model_message(name)
        if problem is not None:
            p.error(problem)
    if args.depth is not None and args.depth < 0:
        p.error(f"--depth must be 0 or more, got {args.depth}")
    # --variant applies to the ImageNet ResNets, --shortcut to the CIFAR ResNets (not the plain nets).
    takes = {
        name: {"variant"}
        if name in models.IMAGENET_MODELS
        else {"shortcut"} & set(inspect.signature(known[name]).parameters)
        for name in args.models
    }
    for option in ("variant", "shortcut"):
        if getattr(args, option) is not None and not any(option in t for t in takes.values()):
            p.error(f"--{option} does not apply to {', '.join(args.models)}")
    summaries: list[Summary] = []
    for name in args.models:
        model = known[name](**{k: getattr(args, k) for k in takes[name] if getattr(args, k) is not None})
        if args.dtype != "float32":
            model.to(args.dtype)
        shape = args.input_shape or ((1, 3, 32, 32) if name in cifar else (1, 3, 224, 224))
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        if shape[1] != first_conv.in_channels:
            p.error(
                f"--input-shape {','.join(map(str, shape))}: {name} takes {first_conv.in_channels} input "
                f"channels (C, the second value), got {shape[1]}"
            )
        if args.freeze != "none":
            model.requires_grad_(False)
        if args.freeze == "backbone":
            getattr(model, classifier_name(model)).requires_grad_(True)
        label = " ".join([name, *(f"{k} {getattr(args, k)}" for k in sorted(takes[name]) if getattr(args, k))])
        summaries.append(summary(model, shape, dtype=args.dtype, measure_memory=not args.no_memory, label=label))

    if args.output_format == "json":
        print(to_json(summaries, args.depth))
    elif args.output_format == "markdown":
        print(markdown(summaries[0] if len(summaries) == 1 else summaries, args.depth))
    else:
        print(text(summaries[0], args.depth) if len(summaries) == 1 else comparison_text(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
