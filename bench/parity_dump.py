"""Dump a few whole-model training steps to .npz, to compare two versions of npresnet bit for bit.

    python bench/parity_dump.py OUT_DIR                  # every case, each in its own process
    python bench/parity_dump.py --compare BEFORE AFTER   # one line per case

For a refactoring that must not change a result: run it with the old version installed, then with
the new one, and compare. Each case trains three SGD steps (momentum, train-mode BatchNorm) of a
small model and saves every step's loss, the first step's input gradient and parameter gradients,
the final parameters and buffers, and the final eval-mode logits.

Cases: ResNet-20 (CIFAR, shortcut A) on 2x3x32x32, a one-block-per-stage ResNet-50-style
Bottleneck network on 2x3x64x64, and a grouped (ResNeXt-style) one; each in the fixed mode at one
and two threads, and in a "forced" mode at one and two threads: the measured dispatch with its
timing replaced by a fixed preference (Winograd, then the direct kernels, then the batch split,
then the smallest chunks), so that every algorithm runs and the result is still deterministic.
(The real measure mode picks by timing, which differs from run to run.) The winners are saved too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

MODELS = ("resnet20", "bottleneck", "grouped")
CASES = [(model, mode, threads) for model in MODELS for mode in ("fixed", "forced") for threads in (1, 2)]


def _engine_modules():
    """(set_num_threads, the measured dispatch's module): wherever this version keeps them."""
    try:
        from npresnet.engine import autotune, set_num_threads
    except ImportError:
        from npresnet import autotune
        from npresnet.runtime import set_num_threads
    return set_num_threads, autotune


def _preference(name: str) -> tuple[int, int]:
    """Lower is preferred: a deterministic stand-in for a timing."""
    method, _, samples = name.partition("/")
    order = ["winograd-split", "winograd", "direct", "split", "gemm"]
    if name == "direct/dots":
        return (2, -1)
    return (order.index(method), int(samples) if samples.isdigit() else 0)


def _forced_best_times(candidates):
    ranked = sorted(candidates, key=_preference)
    return {name: 0.001 * (1 + 10 * ranked.index(name)) for name in candidates}


def _model(name: str):
    from npresnet import models
    from npresnet.models.blocks import Bottleneck
    from npresnet.models.resnet import ResNet

    if name == "resnet20":
        return models.resnet20(seed=0), (2, 3, 32, 32)
    if name == "bottleneck":
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, seed=0), (2, 3, 64, 64)
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=16, seed=0), (2, 3, 64, 64)


def run_case(model_name: str, mode: str, threads: int, out: str) -> None:
    from npresnet import nn
    from npresnet.optim import SGD

    set_num_threads, autotune = _engine_modules()
    set_num_threads(threads)
    if mode == "forced":
        autotune.set_mode("measure")
        autotune.set_cache_file(None)
        autotune._best_times = _forced_best_times
    else:
        autotune.set_mode("fixed")
    model, shape = _model(model_name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    target = np.arange(shape[0]) % 10
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    saved: dict[str, np.ndarray] = {}
    losses = []
    for step in range(3):
        optimizer.zero_grad()
        loss = criterion(model(x), target)
        losses.append(np.asarray(loss, dtype=np.float64))
        dx = model.backward(criterion.backward())
        if step == 0:
            saved["dx"] = np.asarray(dx)
            for name, p in model.named_parameters():
                saved[f"grad/{name}"] = np.asarray(p.grad)
        optimizer.step()
    saved["losses"] = np.array(losses)
    for name, value in model.state_dict().items():
        saved[f"state/{name}"] = np.asarray(value)
    model.eval()
    saved["eval_logits"] = np.asarray(model(x))
    choices = sorted(autotune.choices().items())
    saved["choices"] = np.array([f"{k} -> {v}" for k, v in choices] or [""])
    np.savez(os.path.join(out, f"{model_name}-{mode}-{threads}.npz"), **saved)


def compare(before: str, after: str) -> int:
    """Print one line per case: identical bits, or the arrays that differ (and by how much)."""
    failures = 0
    for name in sorted(os.listdir(before)):
        if not name.endswith(".npz"):
            continue
        a, b = np.load(os.path.join(before, name)), np.load(os.path.join(after, name))
        differ = []
        for key in sorted(set(a.files) | set(b.files)):
            if key not in a.files or key not in b.files:
                differ.append(f"{key} (missing)")
            elif key == "choices":
                if list(a[key]) != list(b[key]):
                    differ.append("choices")
            elif a[key].shape != b[key].shape or a[key].tobytes() != b[key].tobytes():
                diff = np.max(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)))
                differ.append(f"{key} (max |diff| {diff:.3g})")
        arrays = len(a.files)
        print(f"{name}: {'identical bits' if not differ else 'DIFFERENT: ' + ', '.join(differ)} ({arrays} arrays)")
        failures += bool(differ)
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="folder for the .npz files")
    p.add_argument("--case", nargs=3, metavar=("MODEL", "MODE", "THREADS"), help=argparse.SUPPRESS)
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.compare:
        return 1 if compare(*args.compare) else 0
    os.makedirs(args.out, exist_ok=True)
    if args.case:
        run_case(args.case[0], args.case[1], int(args.case[2]), args.out)
        return 0
    for model, mode, threads in CASES:
        cmd = [sys.executable, os.path.abspath(__file__), args.out, "--case", model, mode, str(threads)]
        subprocess.run(cmd, check=True)
        print(f"{model} {mode} {threads} thread(s): done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
