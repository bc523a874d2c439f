"""``--threads 1,2,...`` / ``--scaling``: the same runs at several thread counts, and the speed-ups.

Each thread count is a complete bench run (``cli.run``: BLAS, Numba and torch all set to that
count, the kernel choice measured afresh, since its winners are kept per thread count). The
report then holds every row (each with its ``threads``) and a ``scaling`` table: per model and
mode, the time per step of npresnet and torch at each count and the speed-up over the smallest
count (1 in practice), and ``share``: npresnet's speed-up divided by torch's (the target: at least
0.8 at 2 threads).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from .. import settings
from ..engine import autotune

__all__ = ["parse_threads", "run_scaling", "scaling_table", "shared_autotune_cache", "speedups"]


def parse_threads(text: str, cores: int) -> list[int]:
    """'4' -> [4]; '1,2,4' -> [1, 2, 4]; 'all' -> [cores]. Raises ValueError naming the problem."""
    counts = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            counts.append(cores)
        elif part.isdigit() and int(part) >= 1:
            counts.append(int(part))
        else:
            raise ValueError(f"--threads takes thread counts >= 1 separated by commas (or 'all'), got {text!r}")
    return list(dict.fromkeys(counts))


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, mode, threads): times and speed-ups over the smallest thread count."""
    table = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["mode"], row["batch"], row["image_size"]), []).append(row)
    for (model, mode, batch, size), group in groups.items():
        group = sorted(group, key=lambda r: r["threads"])
        base = group[0]
        for row in group:
            entry = {
                "model": model,
                "mode": mode,
                "batch": batch,
                "image_size": size,
                "threads": row["threads"],
                "npresnet_s": row["npresnet_s"],
                "npresnet_speedup": base["npresnet_s"] / row["npresnet_s"],
            }
            if "torch_s" in row and "torch_s" in base:
                entry["torch_s"] = row["torch_s"]
                entry["torch_speedup"] = base["torch_s"] / row["torch_s"]
                entry["ratio"] = row["npresnet_s"] / row["torch_s"]
                entry["share"] = entry["npresnet_speedup"] / entry["torch_speedup"]
            table.append(entry)
    return table


def scaling_table(table: list[dict[str, Any]]) -> list[str]:
    lines = ["scaling (speed-up = time at the fewest threads / time here; share = npresnet's speed-up / torch's):"]
    for e in table:
        line = (
            f"  {e['model']:<10} {e['mode']:<8} {e['threads']:>2} thread(s): npresnet {e['npresnet_s']:7.3f} s "
            f"(x{e['npresnet_speedup']:.2f})"
        )
        if "torch_s" in e:
            line += (
                f"  torch {e['torch_s']:7.3f} s (x{e['torch_speedup']:.2f})  ratio {e['ratio']:.2f}x"
                f"  share {e['share']:.2f}"
            )
        lines.append(line)
    return lines


@contextlib.contextmanager
def shared_autotune_cache(mode: str) -> Iterator[None]:
    """In measure mode, keep the winners in a temporary cache file that the memory probes' fresh
    processes (``--memory``) read too: they then run the algorithms the timed steps ran, and time
    nothing (timing runs the whole-batch candidates, which would inflate their peak). The cache file
    in use (the user's cache directory's by default) is passed on as it is; only where the cache is
    off (``--no-autotune-cache``) is a temporary one used, and its folder removed after."""
    mode_variable, cache_variable = settings.variable("AUTOTUNE"), settings.variable("AUTOTUNE_CACHE")
    if mode != "measure":
        yield
        return
    saved = {k: os.environ.get(k) for k in (mode_variable, cache_variable)}
    in_use = autotune.cache_file()
    with contextlib.ExitStack() as stack:
        if in_use is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="npresnet-bench-autotune-"))
            path = os.path.join(folder, "autotune.json")
            autotune.set_cache_file(path)
            stack.callback(autotune.set_cache_file, None)
        else:
            path = in_use
        os.environ.update({mode_variable: "measure", cache_variable: path})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def run_scaling(
    args: argparse.Namespace, threads: list[int], run: Callable[[argparse.Namespace], dict[str, Any]]
) -> dict[str, Any]:
    """``run`` once per thread count; one report with every row, ``machine.threads`` the list, and ``scaling``."""
    reports = []
    with shared_autotune_cache(getattr(args, "autotune", "fixed")):
        for count in threads:
            one = copy.copy(args)
            one.threads = count
            reports.append(run(one))
    machine = dict(reports[0]["machine"])
    machine["threads"] = threads
    machine["max_rss_mb"] = max(r["machine"].get("max_rss_mb", 0) for r in reports)
    machine["autotune_choices"] = {k: v for r in reports for k, v in r["machine"].get("autotune_choices", {}).items()}
    machine["numba_pool"] = {str(n): r["machine"].get("numba_pool") for n, r in zip(threads, reports)}  # per count
    rows = [row for report in reports for row in report["results"]]
    report: dict[str, Any] = {"machine": machine, "results": rows}
    if len(threads) > 1:
        table = speedups(rows)
        report["scaling"] = table
        print("\n".join(scaling_table(table)))
    return report
