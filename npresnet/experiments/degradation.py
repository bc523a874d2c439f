"""The degradation experiment of He et al. 2015 (Figures 1 and 6) in miniature, on ``digits()``.

::

    python -m npresnet.experiments.degradation --quick --out runs/degradation-quick   # 10 epochs
    python -m npresnet.experiments.degradation --out docs/degradation                 # the full run

Plain-20/56 and ResNet-20/56 (the CIFAR networks of ``npresnet.models.cifar``: the same layers
and parameters, with and without option-A shortcuts) are trained on scikit-learn's 8x8 digits
with one recipe, through ``npresnet.training``. The paper's observation: a deeper *plain* network
has a *higher training error* than a shallower one (so it is not overfitting: it is harder to
optimise), while a deeper residual network has a lower one.

For every network ``GradientFlow`` (``npresnet.inspect``) records one training step before
training starts and one after it ends, on the same fixed batch: the gradient norm arriving at each
block, and the parts that reach the block's input through the main branch and through the shortcut.

Writes to ``--out``:

* ``training_error.png``: training error (dashed) and test error (bold) against iterations, plain
  networks on the left, residual on the right (the layout of the paper's Figure 6);
* ``gradient_flow_init.png`` / ``gradient_flow_trained.png``: one column per network, at
  initialisation and after training: gradient norm per block (both branches) against depth, and
  the update/weight ratio of every weight layer for that step;
* ``metrics.csv``: one row per network and epoch; ``results.json``: the recipe, the per-epoch
  history, the final errors and the gradient-flow records; ``summary.md``: the final table.

The training runs' checkpoints go to ``--work`` (default ``OUT/runs``, inside the ``--out`` folder;
the command prints both folders). The four networks can be trained by separate processes and then
combined without retraining, all of them sharing one ``--work``::

    for net in "56 plain" "56 resnet" "20 plain" "20 resnet"; do set -- $net
        python -m npresnet.experiments.degradation --depths $1 --kinds $2 --work runs/degradation \\
            --out runs/degradation-parts/$2$1 &
    done; wait
    python -m npresnet.experiments.degradation --reuse --work runs/degradation --out docs/degradation

On a shared machine, limit each process to one thread (``OPENBLAS_NUM_THREADS=1
NUMBA_NUM_THREADS=1``): oversubscribed BLAS and Numba threads made epochs several times slower here.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import data as D
from ..atomic_write import atomic_write_text
from ..commands import EXIT_OPTIONS, command_parser
from ..inspect import GradientFlow, plot_gradient_flow, summarize
from ..models.cifar import CifarResNet
from ..nn import CrossEntropyLoss
from ..optim import SGD
from ..plotting import pyplot, save_figure
from ..training import TrainConfig, Trainer, build_transforms

__all__ = ["QUICK", "RECIPE", "main", "run", "train_network"]

# One recipe for every network (the paper's CIFAR recipe, scaled to digits' 12 iterations per epoch):
# SGD, lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr / 10 at 50% and 75% of training, a short
# linear warm-up (the paper warms ResNet-110 up; here all four nets get the same one), pad-1 crop.
RECIPE: dict[str, Any] = dict(
    data="digits",
    epochs=60,
    batch_size=128,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="multistep",
    milestones=[30, 45],
    gamma=0.1,
    warmup_steps=24,
    warmup="linear",
    warmup_factor=0.1,
    augment=True,
    normalize="channel",
    seed=0,
)
QUICK: dict[str, Any] = dict(epochs=10, milestones=[6, 8])


def network_name(depth: int, residual: bool) -> str:
    return f"{'resnet' if residual else 'plain'}{depth}"


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR network has 6n + 2 layers (8, 14, 20, 32, 44, 56, 110, ...), got depth {depth}")
    return (depth - 2) // 6


def _flow_batch(trainer: Trainer, size: int) -> tuple[Any, Any]:
    """The first ``size`` training images, normalised as for evaluation (no augmentation): the same batch
    for every network."""
    _, test_transform = build_transforms(trainer.config, trainer.train_set)
    subset = trainer.train_set.subset(np.arange(min(size, len(trainer.train_set))))
    loader = D.DataLoader(
        subset,
        len(subset),
        transform=test_transform,
        prefetch=0,
        backend=trainer.config.backend,
        dtype=np.dtype(trainer.config.dtype),
    )
    return next(iter(loader))


def measure_flow(trainer: Trainer, batch: tuple[Any, Any]) -> dict[str, Any]:
    """One training step with ``GradientFlow`` on a *copy* of the run's model (the run is not touched),
    with a fresh SGD at the recipe's peak learning rate, so that every network and both moments
    (before and after training) are measured alike."""
    model = copy.deepcopy(trainer.model)
    model.train()
    c = trainer.config
    optimizer = SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    flow = GradientFlow(model)
    flow.step(*batch, CrossEntropyLoss(), optimizer)
    return flow.to_dict()


def train_network(
    depth: int,
    residual: bool,
    settings: dict[str, Any],
    work_dir: str,
    flow_batch: int = 128,
    log: Callable[[str], None] = print,
    progress: str = "none",
) -> dict[str, Any]:
    """Train one network with the recipe ``settings``; its record for ``results.json``."""
    name = network_name(depth, residual)
    config = TrainConfig(**{**settings, "model": name, "out_dir": os.path.join(work_dir, name), "progress": progress})
    model = CifarResNet(blocks_per_stage(depth), num_classes=10, shortcut="A" if residual else None, seed=config.seed)
    trainer = Trainer(config, model=model, log=lambda line: log(f"[{name}] {line}"))
    batch = _flow_batch(trainer, flow_batch)
    flow_init = measure_flow(trainer, batch)
    t0 = time.perf_counter()
    result = trainer.fit(overwrite=True)
    seconds = time.perf_counter() - t0
    flow_trained = measure_flow(trainer, batch)
    # The training error of the last epoch is measured on augmented batches in training mode (as the
    # paper's curves); also measure it in eval mode without augmentation, on all training images.
    _, test_transform = build_transforms(config, trainer.train_set)
    train_eval = trainer.evaluate(
        D.DataLoader(
            trainer.train_set,
            config.eval_batch_size,
            transform=test_transform,
            prefetch=0,
            backend=config.backend,
            dtype=np.dtype(config.dtype),
        )
    )
    last = result.history[-1]
    log(
        f"[{name}] done in {seconds:.0f}s: train error {100 * (1 - last['train_acc']):.2f}% "
        f"(eval mode {100 * (1 - train_eval['test_acc']):.2f}%), test error {100 * (1 - last['test_acc']):.2f}%"
    )
    return {
        "depth": depth,
        "residual": residual,
        "parameters": trainer.model.num_parameters(),
        "recipe": settings,
        "history": result.history,
        "train_seconds": seconds,
        "final_train_error": 1.0 - last["train_acc"],  # last epoch: augmented batches, train mode
        "final_train_error_eval": 1.0 - train_eval["test_acc"],  # eval mode, no augmentation
        "final_test_error": 1.0 - last["test_acc"],
        "final_train_loss": last["train_loss"],
        "flow_init": flow_init,
        "flow_trained": flow_trained,
        "flow_init_summary": summarize(flow_init),
        "flow_trained_summary": summarize(flow_trained),
    }


def run(
    depths: Sequence[int] = (20, 56),
    out_dir: str = "docs/degradation",
    work_dir: str | None = None,
    recipe: dict[str, Any] | None = None,
    flow_batch: int = 128,
    log: Callable[[str], None] | None = None,
    progress: str = "none",
    kinds: Sequence[str] = ("plain", "resnet"),
    reuse: bool = False,
) -> dict[str, Any]:
    """Train plain and residual networks of each depth with one recipe; write figures and metrics.

    Returns the ``results.json`` content. ``recipe`` overrides entries of ``RECIPE`` (any
    ``TrainConfig`` field, e.g. ``epochs``, ``train_limit``). Each network's record is also kept in
    ``work_dir/<name>/degradation.json``; with ``reuse`` a network whose record there has the same
    recipe is not trained again (so networks can be trained by separate processes, then combined).
    ``work_dir`` defaults to ``out_dir/runs``: nothing is written outside the folders named.
    """
    log = log or (lambda line: print(line, flush=True))
    work_dir = os.path.join(out_dir, "runs") if work_dir is None else work_dir
    settings = {**RECIPE, **(recipe or {})}
    for depth in depths:
        blocks_per_stage(depth)
    unknown = [k for k in kinds if k not in ("plain", "resnet")]
    if unknown or not kinds:
        raise ValueError(f"kinds must be 'plain' and/or 'resnet', got {list(kinds)}")
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "recipe": settings,
        "depths": list(depths),
        "networks": {},
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    for depth in depths:
        for residual in (False, True):
            if ("resnet" if residual else "plain") not in kinds:
                continue
            name = network_name(depth, residual)
            record_path = os.path.join(work_dir, name, "degradation.json")
            record = None
            if reuse and os.path.exists(record_path):
                with open(record_path, encoding="utf-8") as f:
                    record = json.load(f)
                if record.get("recipe") != json.loads(json.dumps(settings)):
                    log(f"[{name}] {record_path} was trained with another recipe: training again")
                    record = None
                else:
                    log(f"[{name}] reusing {record_path}")
            if record is None:
                record = train_network(depth, residual, settings, work_dir, flow_batch, log, progress)
                atomic_write_text(record_path, json.dumps(record))
            results["networks"][name] = record
    results["wall_seconds"] = time.perf_counter() - started
    results["train_seconds_total"] = sum(net["train_seconds"] for net in results["networks"].values())
    write_outputs(results, out_dir)
    return results


# ---------------------------------------------------------------------------------------------- outputs
def write_outputs(results: dict[str, Any], out_dir: str) -> None:
    """metrics.csv, results.json, summary.md, and the figures (if matplotlib is installed)."""
    buffer = io.StringIO()
    writer = None
    for name, net in results["networks"].items():
        for row in net["history"]:
            full = {
                "network": name,
                "depth": net["depth"],
                "residual": net["residual"],
                **row,
                "train_error": 1.0 - row["train_acc"],
                "test_error": 1.0 - row["test_acc"],
            }
            if writer is None:
                writer = csv.DictWriter(buffer, fieldnames=list(full))
                writer.writeheader()
            writer.writerow(full)
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), buffer.getvalue())
    atomic_write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    atomic_write_text(os.path.join(out_dir, "summary.md"), summary_table(results) + "\n")
    try:
        plot_training_error(results, os.path.join(out_dir, "training_error.png"))
        for when in ("init", "trained"):
            flows = {name: net[f"flow_{when}"] for name, net in results["networks"].items()}
            label = "at initialisation" if when == "init" else "after training"
            plot_gradient_flow(
                flows,
                os.path.join(out_dir, f"gradient_flow_{when}.png"),
                suptitle=f"gradient norm per block, one training step {label} (same batch)",
            )
    except ImportError as exc:
        print(f"note: figures skipped: {exc}", file=sys.stderr)


def summary_table(results: dict[str, Any]) -> str:
    """A markdown table of the final errors and the gradient norms at the first and last block."""
    lines = [
        "| network | params | train error (last epoch) | train error (eval mode) | test error | "
        "train loss | input-gradient norm, block 1 / last block (init) | train time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, net in results["networks"].items():
        s = net["flow_init_summary"]
        lines.append(
            f"| {name} | {net['parameters']:,} | {100 * net['final_train_error']:.2f}% | "
            f"{100 * net['final_train_error_eval']:.2f}% | {100 * net['final_test_error']:.2f}% | "
            f"{net['final_train_loss']:.4f} | {s['first_over_last']:.2f} | {net['train_seconds']:.0f}s |"
        )
    return "\n".join(lines)


def plot_training_error(results: dict[str, Any], path: str) -> None:
    """Training error (dashed) and test error (bold) against iterations: plain left, residual right."""
    plt = pyplot("drawing the training-error figure")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, residual in zip(axes, (False, True)):
        for k, depth in enumerate(results["depths"]):
            net = results["networks"].get(network_name(depth, residual))
            if net is None:
                continue
            steps = [r["step"] for r in net["history"]]
            colour = colours[k % len(colours)]
            ax.plot(
                steps,
                [100 * (1 - r["train_acc"]) for r in net["history"]],
                "--",
                color=colour,
                lw=1,
                label=f"{network_name(depth, residual)} train",
            )
            ax.plot(
                steps,
                [100 * (1 - r["test_acc"]) for r in net["history"]],
                "-",
                color=colour,
                lw=2,
                label=f"{network_name(depth, residual)} test",
            )
        ax.set(
            xlabel="iterations",
            title="plain networks" if not residual else "ResNets (option A shortcuts)",
            yscale="log",
        )
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    figure.suptitle("digits (8x8): training error (dashed) and test error (bold)")
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


# ---------------------------------------------------------------------------------------------- command line
def _depth(value: str) -> int:
    """An argparse ``type``: a CIFAR network depth, 6n + 2 with n >= 1."""
    try:
        depth = int(value)
        blocks_per_stage(depth)
    except ValueError as exc:
        message = str(exc) if "6n + 2" in str(exc) else f"expected an integer, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None
    return depth


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "degradation",
        "Plain vs residual networks on digits: the degradation problem (He et al. 2015, Figure 6 in "
        "miniature). Writes figures, metrics.csv, results.json and summary.md to --out, the training "
        "runs' checkpoints to --work (default OUT/runs).",
        examples=[
            "python -m npresnet.experiments.degradation --quick --out runs/degradation-quick",
            "python -m npresnet.experiments.degradation --out docs/degradation --work runs/degradation",
        ],
        exit_status=[
            "0  done",
            "1  a problem during the run (e.g. matplotlib missing), one line 'error: ...'",
            EXIT_OPTIONS,
        ],
    )
    p.add_argument("--quick", action="store_true", help=f"a short run: {QUICK['epochs']} epochs instead of 60")
    p.add_argument("--out", default="docs/degradation", help="where figures and metrics go (default docs/degradation)")
    p.add_argument(
        "--work", default=None, help="where the training runs' checkpoints go (default: OUT/runs, inside --out)"
    )
    p.add_argument("--depths", type=_depth, nargs="+", default=[20, 56], help="6n+2 depths (default 20 56)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"override the recipe's {RECIPE['epochs']} epochs (the lr drops stay at 50%% and 75%%)",
    )
    p.add_argument("--seed", type=int, default=None, help="initial weights and data order (default 0)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["plain", "resnet"],
        choices=["plain", "resnet"],
        help="which networks to train (default both)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="do not retrain networks whose record in --work has the same recipe (combine separate runs)",
    )
    p.add_argument(
        "--progress",
        choices=["none", "plain", "tqdm", "auto"],
        default="none",
        help="progress display of each training run (default none)",
    )
    return p


def recipe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    recipe = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        recipe.update(epochs=args.epochs, milestones=[round(args.epochs * 0.5), round(args.epochs * 0.75)])
    if args.seed is not None:
        recipe["seed"] = args.seed
    if args.train_limit is not None:
        recipe["train_limit"] = args.train_limit
    return recipe


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        results = run(
            args.depths,
            args.out,
            args.work,
            recipe_from_args(args),
            progress=args.progress,
            kinds=args.kinds,
            reuse=args.reuse,
        )
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(results))
    work = os.path.join(args.out, "runs") if args.work is None else args.work
    print(f"wrote {args.out}/ (checkpoints: {work}/) in {results['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
