"""``python -m npresnet.bench``: how fast npresnet runs ResNets, measured against the machine and PyTorch.

For each model it times, after warm-up, the forward pass in evaluation mode (under ``no_grad``)
and the training step (forward + cross-entropy + backward + SGD update), and reports the median
seconds per batch, images/s, achieved GFLOP/s (FLOPs = 2 x MACs of the convolutions and the fc
layer; a training step counts 3 x the forward's: forward, input gradient and weight gradient) and
its share of the single-GEMM peak measured at start-up. The first (compile / warm-up) call is
timed separately. ``--compare torch`` runs the same model with the same weights and threads in
PyTorch after checking both give the same logits; ``--profile`` splits the time by op kind.

``--threads N`` (default 1) sets BLAS and torch to N and Numba to 1 (``npresnet.runtime`` says why);
glibc's allocator is tuned to keep freed activation memory (``--no-tune-allocator`` to compare).
Memory: the NumPy peak of one untimed step (tracemalloc), and with ``--memory`` each framework's
resident-memory peak of a step in a fresh process. The OpenBLAS variables
``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` slow numpy's GEMM on some machines; the bench reports the
BLAS kernel in use, and you may unset them for the benchmark command only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import functional, kernels, models, nn, no_grad, runtime
from .backend import get_array_module, to_numpy, xp_for
from .optim import SGD

DEFAULT_MODELS = ("resnet18", "resnet50", "resnet20", "resnet56")
CIFAR_PREFIXES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain")


def is_cifar(name: str) -> bool:
    return name.startswith(CIFAR_PREFIXES)


def default_size(name: str) -> int:
    return 32 if is_cifar(name) else 224


def default_batch(name: str) -> int:
    return 64 if is_cifar(name) else 8


# ------------------------------------------------------------------------------------------ machine


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, backend: str) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return {
        "cpu": cpu_model(), "threads": threads, "backend": backend, "kernels": kernels.active(),
        "blas": blas_info(), "versions": versions,
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


def gemm_peak_gflops(dtype: Any, xp: Any = np, n: int = 1536, repeat: int = 5) -> float:
    """GFLOP/s of one large square GEMM: the ceiling an im2col convolution can approach."""
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)
    b = a.T.copy()
    times = timed(lambda: a @ b, warmup=1, repeat=repeat, xp=xp)[1]
    return 2 * n**3 / statistics.median(times) / 1e9


# ------------------------------------------------------------------------------------------ timing


def synchronize(xp: Any) -> None:
    if xp is not np:
        xp.cuda.Device().synchronize()


def timed(fn: Callable[[], Any], warmup: int, repeat: int, xp: Any = np) -> tuple[float, list[float]]:
    """(first call's seconds, [seconds of each timed call after ``warmup`` more calls])."""
    start = time.perf_counter()
    fn()
    synchronize(xp)
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        fn()
    synchronize(xp)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return first, times


def step_peak_memory(step: Callable[[], Any], xp: Any = np) -> int | None:
    """Peak bytes of NumPy arrays allocated during one call of ``step`` above those alive before it
    (tracemalloc sees every NumPy allocation, whatever the allocator keeps cached). One extra,
    untimed call: tracing slows Python down. None on the GPU."""
    if xp is not np:
        return None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def memory_probe(framework: str, name: str, mode: str, batch: int, size: int, dtype: str, threads: int) -> int:
    """Run in a fresh process: peak resident memory of two steps (``VmHWM``) minus the resident
    memory once the model and the batch exist. The same measure for npresnet and torch (the
    allocators' caches count: they are memory the step really takes from the machine)."""
    runtime.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, size, size)).astype(dtype)
    model = build_npresnet(name, dtype, "numpy")
    target_host = rng.integers(0, model.fc.out_features if hasattr(model, "fc") else 1000, batch)
    if framework == "torch":
        import torch

        from . import torch_reference

        torch.set_num_threads(threads)
        tmodel = torch_reference.build(name).to(dtype=getattr(torch, dtype))
        tmodel.load_state_dict({k: torch.as_tensor(to_numpy(v)) for k, v in model.state_dict().items()})
        del model
        step = make_torch_step(torch, tmodel, mode, torch.as_tensor(x_host), torch.as_tensor(target_host))
    else:
        step = make_step(mode, model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=1e-3, momentum=0.9),
                         x_host, target_host)
    baseline = _rss_bytes("VmRSS")
    step()
    step()
    return _rss_bytes("VmHWM") - baseline


def measure_memory(framework: str, name: str, mode: str, batch: int, size: int, dtype: str,
                   threads: int) -> int | None:
    """``memory_probe`` in a subprocess (a fresh heap); None if it fails."""
    code = (f"from npresnet.bench import memory_probe; print(memory_probe({framework!r}, {name!r}, {mode!r}, "
            f"{batch}, {size}, {dtype!r}, {threads}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"\n  memory probe failed ({framework}): {done.stderr.strip().splitlines()[-1:]}")
        return None
    return int(done.stdout.strip().splitlines()[-1])


def quartiles(times: list[float]) -> tuple[float, float]:
    if len(times) < 2:
        return times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[0], q[2]


# ------------------------------------------------------------------------------------------ models


def build_npresnet(name: str, dtype: Any, backend: str) -> nn.Module:
    factory = getattr(models, name, None)
    if factory is None:
        raise SystemExit(f"unknown model {name!r}; try one of {', '.join(models.__all__)}")
    return factory(seed=0).to(np.dtype(dtype)).to(backend)


def training_step(model: nn.Module, criterion: nn.Module, optimizer: SGD, x: Any, target: Any) -> Any:
    """forward + loss + backward + SGD update: one step of training."""
    optimizer.zero_grad()
    loss = criterion(model(x), target)
    model.backward(criterion.backward())
    optimizer.step()
    return loss


def make_step(mode: str, model: nn.Module, criterion: nn.Module, optimizer: SGD, x: Any,
              target: Any) -> Callable[[], Any]:
    """The timed unit: an evaluation-mode forward without caches, or a whole training step."""
    if mode == "forward":
        model.eval()

        def forward() -> Any:
            with no_grad():
                return model(x)
        return forward
    model.train()
    return lambda: training_step(model, criterion, optimizer, x, target)


def make_torch_step(torch: Any, tmodel: Any, mode: str, x: Any, target: Any) -> Callable[[], None]:
    """The same unit for the torch model: a no-grad evaluation forward, or forward + cross-entropy +
    backward + SGD (lr 1e-3, momentum 0.9) in training mode."""
    if mode == "forward":
        tmodel.eval()

        def forward() -> None:
            with torch.no_grad():
                tmodel(x)
        return forward
    tmodel.train()
    optimizer = torch.optim.SGD(tmodel.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(x), target).backward()
        optimizer.step()
    return train_step


def forward_macs(model: nn.Module, input_shape: tuple[int, ...], dtype: Any) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one forward of ``input_shape``."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.size * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.size * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    xp = get_array_module(next(iter(model.parameters())).data)
    with no_grad():
        model(xp.zeros((1, *input_shape[1:]), dtype=dtype))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total * input_shape[0]


# ------------------------------------------------------------------------------------------ profile


@contextmanager
def op_profile(times: dict[str, float]):
    """Time op kinds by wrapping the entry points the modules call (nothing else changes).

    Keys are "<kind> <direction>": the direction is that of the layer method being run, so the
    im2col that a convolution's backward runs to rebuild its columns counts as backward.
    """
    patched: list[tuple[Any, str, Any]] = []
    direction = ["forward"]

    def wrap(owner: Any, attr: str, kind: str, sets_direction: str | None = None) -> None:
        original = getattr(owner, attr)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            outer = direction[0]
            if sets_direction:
                direction[0] = sets_direction
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[f"{kind} {direction[0]}"] += time.perf_counter() - start
                direction[0] = outer

        patched.append((owner, attr, original))
        setattr(owner, attr, timed_call)

    wrap(functional.conv, "im2col", "im2col")
    wrap(functional.conv, "col2im", "col2im")
    if kernels.active() == "numba":            # thin 3x3 convs: kernels.get looks these up at each call
        from .kernels import conv3x3_cpu

        for name in ("conv3x3_forward", "conv3x3_backward_input", "conv3x3_backward_weight"):
            wrap(conv3x3_cpu, name, "direct3x3")
    for layer, kind in ((nn.Conv2d, "conv"), (nn.BatchNorm2d, "batchnorm"), (nn.ReLU, "relu"),
                        (nn.MaxPool2d, "pooling"), (nn.AdaptiveAvgPool2d, "pooling"), (nn.Linear, "linear")):
        for method in ("forward", "backward"):
            wrap(layer, method, kind, sets_direction=method)
    try:
        yield
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)


PROFILE_KINDS = ("im2col", "col2im", "GEMM", "direct3x3", "batchnorm", "relu", "pooling", "linear", "other")


def profile_ms(times: dict[str, float], steps: int, step_seconds: float) -> dict[str, float]:
    """ms per step for each "<kind> <direction>"; GEMM = conv time minus its im2col/col2im and the
    direct 3x3 kernels (direct3x3: the thin layers' forward, input and weight gradients, see
    kernels/conv3x3_cpu.py); "other total" = the rest of the step (residual adds, loss, optimizer,
    Python); ``step_seconds`` is the mean wall time of the profiled steps."""
    t = {k: v / steps * 1e3 for k, v in times.items()}
    out: dict[str, float] = {}
    for direction in ("forward", "backward"):
        conv = t.get(f"conv {direction}", 0.0)
        out[f"GEMM {direction}"] = conv - sum(t.get(f"{kind} {direction}", 0.0)
                                              for kind in ("im2col", "col2im", "direct3x3"))
        for kind in ("im2col", "col2im", "direct3x3", "batchnorm", "relu", "pooling", "linear"):
            out[f"{kind} {direction}"] = t.get(f"{kind} {direction}", 0.0)
    layers = sum(v for k, v in t.items() if k.split()[0] in ("conv", "batchnorm", "relu", "pooling", "linear"))
    out["other total"] = step_seconds * 1e3 - layers
    return out


def profile_table(profile: dict[str, float]) -> list[str]:
    rows = [f"    {'op':<10} {'forward':>9} {'backward':>9}   (ms per step)"]
    for kind in PROFILE_KINDS:
        if kind == "other":
            rows.append(f"    {'other':<10} {profile['other total']:>19.1f}   residual adds, loss, optimizer, Python")
            continue
        f, b = profile.get(f"{kind} forward", 0.0), profile.get(f"{kind} backward", 0.0)
        rows.append(f"    {kind:<10} {f:9.1f} {b:9.1f}")
    return rows


# ------------------------------------------------------------------------------------------ torch


def torch_setup(name: str, model: nn.Module, dtype: Any, threads: int, backend: str):
    import torch

    from . import torch_reference

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(threads)
    device = "cuda" if backend == "cupy" else "cpu"
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    tmodel = torch_reference.build(name).to(device=device, dtype=tdtype)
    tmodel.load_state_dict({k: torch.as_tensor(to_numpy(v)) for k, v in model.state_dict().items()})
    return torch, tmodel, device, tdtype


def check_same_logits(model: nn.Module, tmodel: Any, torch: Any, x: Any, device: str, dtype: Any) -> float:
    model.eval()
    tmodel.eval()
    with no_grad():
        ours = to_numpy(model(x)).astype(np.float64)
    with torch.no_grad():
        theirs = tmodel(torch.as_tensor(to_numpy(x), device=device)).double().cpu().numpy()
    model.train()
    tmodel.train()
    error = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
    limit = 1e-3 if np.dtype(dtype) == np.float32 else 1e-9
    if error > limit:
        raise SystemExit(f"npresnet and torch disagree on the logits: max relative error {error:.2e} > {limit:g}")
    return error


# ------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace) -> dict[str, Any]:
    xp = xp_for(args.backend)
    allocator_tuned = runtime.tune_allocator() if not args.no_tune_allocator else False
    limiter = runtime.set_num_threads(args.threads)       # BLAS and torch at N, Numba at 1
    if args.compare == "torch":
        import torch  # noqa: F401  (imported now so set_num_threads and the versions see it)

        runtime.set_num_threads(args.threads)
    machine = machine_info(args.threads, args.backend)
    machine["allocator_tuned"] = allocator_tuned
    peak = gemm_peak_gflops(args.dtype, xp)
    machine["gemm_peak_gflops"] = round(peak, 1)
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})" for b in machine["blas"])
    print(f"npresnet bench | {machine['cpu']} | {args.threads} thread(s) | {args.backend} {args.dtype} | "
          f"kernels: {machine['kernels']} | BLAS: {blas}")
    print(f"GEMM peak (single {1536}^3 matmul): {peak:.1f} GFLOP/s")
    results = []
    for name in args.models:
        size = args.size or default_size(name)
        batch = args.batch or default_batch(name)
        model = build_npresnet(name, args.dtype, args.backend)
        rng = np.random.default_rng(0)
        x = xp.asarray(rng.standard_normal((batch, 3, size, size)), dtype=args.dtype)
        num_classes = model.fc.out_features if hasattr(model, "fc") else 1000
        target = xp.asarray(rng.integers(0, num_classes, batch))
        macs = forward_macs(model, (batch, 3, size, size), args.dtype)
        criterion, optimizer = nn.CrossEntropyLoss(), SGD(model.parameters(), lr=1e-3, momentum=0.9)
        compare = None
        if args.compare == "torch":
            compare = torch_setup(name, model, args.dtype, args.threads, args.backend)
            logits_error = check_same_logits(model, compare[1], compare[0], x, compare[2], args.dtype)
        for mode in args.mode:
            print(f"  {name} {mode} batch {batch} {size}x{size} ...", end="", flush=True)
            step = make_step(mode, model, criterion, optimizer, x, target)
            flops = (2 if mode == "forward" else 3 * 2) * macs
            first, times = timed(step, args.warmup, args.repeat, xp)
            peak_bytes = step_peak_memory(step, xp)
            median = statistics.median(times)
            q1, q3 = quartiles(times)
            row = {
                "model": name, "mode": mode, "batch": batch, "image_size": size, "backend": args.backend,
                "dtype": args.dtype, "npresnet_s": median, "iqr_s": q3 - q1, "first_call_s": first,
                "images_per_s": batch / median, "gflops": flops / median / 1e9,
                "peak_share": flops / median / 1e9 / peak, "macs": macs,
                "peak_memory_mb": peak_bytes / 2**20 if peak_bytes is not None else None,
            }
            line = (f"\r  {name:<16} {mode:<8} batch {batch:<4} {size}x{size}: {median:8.3f} s/batch "
                    f"(IQR {q3 - q1:.3f}, first {first:.2f} s)  {batch / median:8.1f} img/s  "
                    f"{row['gflops']:6.1f} GFLOP/s ({100 * row['peak_share']:.0f}% of peak)")
            if row["peak_memory_mb"] is not None:
                line += f"  peak {row['peak_memory_mb']:.0f} MB"
            if compare is not None:
                torch_s = torch_time(compare, mode, x, target, args)
                row.update({"torch_s": torch_s, "ratio": median / torch_s, "logits_max_rel_error": logits_error})
                line += f"  | torch {torch_s:.3f} s, ratio {median / torch_s:.2f}x"
            if args.memory and args.backend == "numpy":
                sizes = {fw: measure_memory(fw, name, mode, batch, size, args.dtype, args.threads)
                         for fw in (("npresnet", "torch") if compare is not None else ("npresnet",))}
                row["rss_peak_mb"] = sizes["npresnet"] / 2**20 if sizes["npresnet"] is not None else None
                line += f"\n    resident memory of a step (fresh process): npresnet {row['rss_peak_mb']:.0f} MB"
                if sizes.get("torch") is not None:
                    row["torch_rss_peak_mb"] = sizes["torch"] / 2**20
                    row["memory_ratio"] = sizes["npresnet"] / sizes["torch"]
                    line += f", torch {row['torch_rss_peak_mb']:.0f} MB, ratio {row['memory_ratio']:.2f}x"
            print(line)
            if args.profile:
                op_times: dict[str, float] = defaultdict(float)
                with op_profile(op_times):
                    start = time.perf_counter()
                    for _ in range(args.repeat):
                        step()
                    synchronize(xp)
                    profiled_step = (time.perf_counter() - start) / args.repeat
                # "other" comes from the profiled steps themselves: against the unprofiled median it
                # could come out negative when the profiled steps ran slower (a busy machine).
                row["profile_ms"] = profile_ms(op_times, args.repeat, profiled_step)
                print("\n".join(profile_table(row["profile_ms"])))
            results.append(row)
    machine["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if limiter is not None:
        limiter.restore_original_limits()
    return {"machine": machine, "results": results}


def torch_time(compare: tuple, mode: str, x: Any, target: Any, args: argparse.Namespace) -> float:
    """PyTorch's median seconds per step, timed like npresnet's."""
    torch, tmodel, device, _ = compare
    tx = torch.as_tensor(to_numpy(x), device=device)
    tt = torch.as_tensor(to_numpy(target), device=device)
    torch_step = make_torch_step(torch, tmodel, mode, tx, tt)

    def step() -> None:
        torch_step()
        if device == "cuda":
            torch.cuda.synchronize()

    _, times = timed(step, args.warmup, args.repeat)
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m npresnet.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model factory names")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 8 at 224x224, 64 at 32x32)")
    p.add_argument("--size", type=int, default=None, help="image size (default: 224, or 32 for CIFAR models)")
    p.add_argument("--mode", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    p.add_argument("--threads", type=int, default=1, help="BLAS and torch threads (default 1; Numba stays at 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first one is reported)")
    p.add_argument("--compare", choices=["torch"], default=None, help="also time PyTorch on the same model")
    p.add_argument("--profile", action="store_true", help="time per op kind, forward and backward")
    p.add_argument("--memory", action="store_true",
                   help="also measure each step's resident memory in a fresh process (npresnet, and torch with "
                        "--compare torch)")
    p.add_argument("--no-tune-allocator", action="store_true",
                   help="leave glibc malloc's thresholds alone (see npresnet.runtime.tune_allocator)")
    p.add_argument("--json", metavar="PATH", default=None, help="write machine info and results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
