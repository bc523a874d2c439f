"""``python -m npresnet.bench`` itself: the options, the measuring loop and its report."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections import defaultdict
from typing import Any

import numpy as np

from .. import nn
from ..backend import xp_for
from ..commands import EXIT_OPTIONS, command_parser, deprecated_option, shape_type
from ..engine import autotune, runtime
from ..optim import SGD
from .compare import check_same_logits, torch_missing, torch_setup, torch_step
from .machine import gemm_peak_gflops, machine_info
from .memory import measure_memory
from .profiler import op_profile, profile_ms, profile_table
from .scaling import parse_threads, run_scaling
from .timing import quartiles, step_peak_memory, synchronize, timed, timed_together
from .workloads import (
    DEFAULT_MODELS,
    build_npresnet,
    default_batch,
    default_size,
    forward_macs,
    make_step,
    unknown_model_message,
)

__all__ = ["check_args", "main", "parse_args", "run"]

DESCRIPTION = "How fast npresnet runs ResNets, measured against the machine and PyTorch (see npresnet.bench)."


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One bench run at one thread count (``args.threads``: an int, or one count as text)."""
    if not isinstance(args.threads, int):
        (args.threads,) = threads_list(args)[:1]
    xp = xp_for(args.backend)
    allocator_tuned = runtime.tune_allocator() if not args.no_tune_allocator else False
    limiter = runtime.set_num_threads(args.threads)  # BLAS, torch and Numba at N
    autotune.set_mode(args.autotune)
    if args.compare == "torch":
        import torch  # noqa: F401  (imported now so set_num_threads and the versions see it)

        runtime.set_num_threads(args.threads)
    machine = machine_info(args.threads, args.backend)
    machine["allocator_tuned"] = allocator_tuned
    machine["autotune"] = args.autotune
    cache = getattr(args, "autotune_cache", autotune.cache_file())  # main's: before any temporary one
    machine["autotune_cache"] = cache if args.autotune == "measure" else None
    peak = gemm_peak_gflops(args.dtype, xp)
    machine["gemm_peak_gflops"] = round(peak, 1)
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})" for b in machine["blas"])
    print(
        f"npresnet bench | {machine['cpu']} | {args.threads} thread(s) | {args.backend} {args.dtype} | "
        f"kernels: {machine['kernels']} | BLAS: {blas}"
    )
    print(f"GEMM peak (single {1536}^3 matmul): {peak:.1f} GFLOP/s")
    if args.autotune == "measure":
        where = machine["autotune_cache"] or "off: every shape is timed in this process"
        print(f"measured kernel choice; its cache: {where}")
    pool = machine["numba_pool"]
    if pool is not None and args.threads > 1:
        why = runtime.tbb_reason(pool["layer"])  # None on TBB
        print(
            f"Numba thread pool: {pool['layer']} layer{'' if why is None else f' (not TBB: {why})'}, "
            f"{pool['handoff_us']:.1f} us per hand-off"
        )
        note = runtime.slow_pool_note((pool["layer"], pool["threads"], pool["handoff_us"]), why=False)  # same figures
        if note is not None:
            print(note)
    legend = "s/batch: median seconds per step; traced peak: NumPy allocations of one step (tracemalloc)"
    if args.compare == "torch":
        legend += (
            "; ratio: npresnet time / torch time, their steps timed in alternation (above 1: npresnet is slower), "
            "against torch's default layout (NCHW) and its channels_last"
        )
    print(legend)
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
            choosing_before = autotune.choosing_seconds()
            if compare is not None:  # the two frameworks' steps in alternation: the same machine state
                tsteps = [torch_step(compare, mode, x, target, channels_last=cl) for cl in (False, True)]
                timings = timed_together([step, *tsteps], args.warmup, args.repeat, xp)
                (first, times), (_, torch_times), (_, torch_cl_times) = timings
            else:
                first, times = timed(step, args.warmup, args.repeat, xp)
            choosing = autotune.choosing_seconds() - choosing_before  # within the first call
            peak_bytes = step_peak_memory(step, xp)
            median = statistics.median(times)
            q1, q3 = quartiles(times)
            row = {
                "model": name,
                "mode": mode,
                "threads": args.threads,
                "batch": batch,
                "image_size": size,
                "backend": args.backend,
                "dtype": args.dtype,
                "npresnet_s": median,
                "iqr_s": q3 - q1,
                "first_call_s": first,
                "choosing_s": choosing,
                "images_per_s": batch / median,
                "gflops": flops / median / 1e9,
                "peak_share": flops / median / 1e9 / peak,
                "macs": macs,
                "peak_memory_mb": peak_bytes / 2**20 if peak_bytes is not None else None,
            }
            line = (
                f"\r  {name:<16} {mode:<8} batch {batch:<4} {size}x{size}: {median:8.3f} s/batch "
                f"(IQR {q3 - q1:.3f}, first {first:.2f} s, choosing {choosing:.2f} of it)  "
                f"{batch / median:8.1f} img/s  "
                f"{row['gflops']:6.1f} GFLOP/s ({100 * row['peak_share']:.0f}% of peak)"
            )
            if row["peak_memory_mb"] is not None:
                line += f"  traced peak {row['peak_memory_mb']:.0f} MB"
            if compare is not None:
                torch_s, torch_cl_s = statistics.median(torch_times), statistics.median(torch_cl_times)
                row.update(
                    {
                        "torch_s": torch_s,
                        "ratio": median / torch_s,
                        "torch_channels_last_s": torch_cl_s,
                        "ratio_channels_last": median / torch_cl_s,
                        "logits_max_rel_error": logits_error,
                    }
                )
                line += (
                    f"  | torch {torch_s:.3f} s, ratio npresnet/torch {median / torch_s:.2f}x; "
                    f"torch channels_last {torch_cl_s:.3f} s, ratio {median / torch_cl_s:.2f}x"
                )
            if args.memory and args.backend == "numpy":
                sizes = {
                    fw: measure_memory(fw, name, mode, batch, size, args.dtype, args.threads)
                    for fw in (("npresnet", "torch") if compare is not None else ("npresnet",))
                }
                ours, theirs = sizes["npresnet"], sizes.get("torch")
                row["rss_peak_mb"] = ours / 2**20 if ours is not None else None
                shown = f"{ours / 2**20:.0f} MB" if ours is not None else "not measured (the probe failed)"
                line += f"\n    resident memory of a step (fresh process): npresnet {shown}"
                if theirs is not None:
                    row["torch_rss_peak_mb"] = theirs / 2**20
                    line += f", torch {theirs / 2**20:.0f} MB"
                    if ours is not None:
                        row["memory_ratio"] = ours / theirs
                        line += f", ratio npresnet/torch {ours / theirs:.2f}x"
            print(line)
            if args.profile:
                op_times: dict[str, float] = defaultdict(float)
                with op_profile(model, op_times):
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
    machine["autotune_choices"] = autotune.choices()  # layer shape and thread counts -> algorithm
    if limiter is not None:
        limiter.restore_original_limits()
    return {"machine": machine, "results": results}


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "bench",
        DESCRIPTION + " Prints a line per model and mode; --json records it all.",
        examples=[
            "python -m npresnet.bench",
            "python -m npresnet.bench --model resnet20 --steps forward --repeat 1",
            "python -m npresnet.bench --model resnet50 --input-shape 16,3,224,224 --compare torch --threads 1,all",
            "python -m npresnet.bench --model resnet20 --batch 128 --compare torch --memory --json r20.json",
        ],
        exit_status=["0  measured (and --json written)", EXIT_OPTIONS],
    )
    p.add_argument(
        "--model",
        dest="models",
        nargs="+",
        metavar="NAME",
        default=list(DEFAULT_MODELS),
        help=f"one or more factories of npresnet.models (default: {' '.join(DEFAULT_MODELS)})",
    )
    deprecated_option(p, "--models", "--model", dest="models", nargs="+")
    p.add_argument(
        "--input-shape",
        type=shape_type(4),
        default=None,
        metavar="N,C,H,W",
        help="the batch: C = 3, H = W (default: 8,3,224,224; 64,3,32,32 for the CIFAR models)",
    )
    p.add_argument("--batch", type=int, default=None, help="shorthand: N of --input-shape")
    p.add_argument("--size", type=int, default=None, help="shorthand: H and W of --input-shape")
    p.add_argument(
        "--steps",
        dest="mode",
        nargs="+",
        default=["forward", "train"],
        choices=["forward", "train"],
        help="which steps to time: forward (eval mode, no_grad) and/or train (forward, loss, backward, "
        "SGD update); default both",
    )
    deprecated_option(p, "--mode", "--steps", dest="mode", nargs="+", choices=["forward", "train"])
    p.add_argument(
        "--threads",
        default=None,
        help="threads for BLAS, Numba and torch: N, or several counts N,M,... to measure the speed-up "
        f"(default: this machine's {runtime.default_threads()} cores)",
    )
    p.add_argument("--scaling", action="store_true", help="same as --threads 1,<all cores>")
    p.add_argument(
        "--autotune",
        choices=["measure", "fixed"],
        default="measure",
        help="kernel choice: time the candidates per layer shape (default), or the fixed rule "
        "(npresnet.engine.autotune)",
    )
    p.add_argument(
        "--no-autotune-cache",
        action="store_true",
        help="measure: time every layer shape in this process, neither reading nor writing the cache "
        "of winners (default: kept per machine in the user's cache directory; NPRESNET_AUTOTUNE_CACHE)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"], help="array library (default numpy)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument(
        "--warmup-runs",
        dest="warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed calls first (the first one's time is reported; default 1)",
    )
    deprecated_option(p, "--warmup", "--warmup-runs", dest="warmup", type=int)
    p.add_argument(
        "--compare",
        choices=["torch"],
        default=None,
        help="also time PyTorch on the same model; the ratio is npresnet time / torch time",
    )
    p.add_argument("--profile", action="store_true", help="time per op kind, forward and backward")
    p.add_argument(
        "--memory",
        action="store_true",
        help="also measure each step's resident memory in a fresh process (npresnet, and torch with --compare torch)",
    )
    p.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="leave glibc malloc's thresholds alone (see npresnet.engine.runtime.tune_allocator)",
    )
    p.add_argument("--json", metavar="PATH", default=None, help="write machine info and results as JSON to PATH")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; a mistake in them (or in what ``check_args`` checks) exits 2 with argparse's message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        parser.error(problem)
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the options that would stop the run midway (checked before measuring), or
    None. Sets ``args.batch`` and ``args.size`` from ``--input-shape``."""
    if args.input_shape is not None:
        n, c, h, w = args.input_shape
        shape = ",".join(map(str, args.input_shape))
        if c != 3 or h != w:
            return f"argument --input-shape: the bench feeds square RGB images (N,3,S,S), got {shape}"
        for option, given, implied in (("--batch", args.batch, n), ("--size", args.size, h)):
            if given is not None and given != implied:
                return f"argument {option}: {given} contradicts --input-shape {shape}"
        args.batch, args.size = n, h
    for option, value, least in (
        ("--batch", args.batch, 1),
        ("--size", args.size, 1),
        ("--warmup-runs", args.warmup, 0),
    ):
        if value is not None and value < least:
            return f"argument {option}: must be at least {least}, got {value}"
    for name in args.models:
        problem = unknown_model_message(name)
        if problem is not None:
            return problem
    try:
        threads_list(args)
    except ValueError as exc:
        return str(exc)
    if args.compare == "torch":
        return torch_missing()
    return None


def threads_list(args: argparse.Namespace) -> list[int]:
    """The thread counts to run: --scaling, --threads N[,M...], else all cores."""
    cores = runtime.default_threads()
    if args.scaling:
        return list(dict.fromkeys([1, cores]))
    return parse_threads(args.threads or str(cores), cores)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench; returns the report. A bad option ends it before anything is measured: argparse's
    usage line and ``error: ...`` on stderr, exit status 2."""
    args = parse_args(argv)
    if args.no_autotune_cache:
        autotune.set_cache_file(None)
    args.autotune_cache = autotune.cache_file()
    report = run_scaling(args, threads_list(args), run)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report
