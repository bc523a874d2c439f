"""Resident memory of one step, measured in a fresh process (``memory_probe`` / ``measure_memory``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from .. import nn
from ..backend import to_numpy
from ..engine import runtime
from ..optim import SGD
from .compare import make_torch_step
from .workloads import build_npresnet, make_step

__all__ = ["measure_memory", "memory_probe"]


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Set VmHWM back to the current resident memory (Linux >= 4.0: ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_probe(framework: str, name: str, mode: str, batch: int, size: int, dtype: str, threads: int) -> int:
    """Run in a fresh process: peak resident memory of two steps (``VmHWM``) minus the resident
    memory once the model and the batch exist. The same measure for npresnet and torch (the
    allocators' caches count: they are memory the step really takes from the machine).

    One step on a batch of 2 runs first and its peak is forgotten (``_reset_peak``): it loads the
    one-time machinery, Numba's compiled kernels and torch's oneDNN primitives, which is not memory
    of a step. Without it, npresnet's ResNet-20 forward measured twice torch's peak, though the
    step's NumPy arrays (tracemalloc) took less than half of it: the difference was the kernels
    being loaded (docs/performance.md). Where the peak cannot be reset, the warm-up's own
    peak (a 2-sample step, smaller than the real one) stays in the figure.
    """
    runtime.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, size, size)).astype(dtype)
    model = build_npresnet(name, dtype, "numpy")
    classes = model.fc.out_features if hasattr(model, "fc") else 1000
    target_host = rng.integers(0, classes, batch)
    warm_x, warm_target = x_host[:2].copy(), target_host[:2].copy()
    if framework == "torch":
        import torch

        from .. import torch_reference

        torch.set_num_threads(threads)
        tmodel = torch_reference.build(name).to(dtype=getattr(torch, dtype))
        tmodel.load_state_dict({k: torch.as_tensor(to_numpy(v)) for k, v in model.state_dict().items()})
        del model
        make_torch_step(torch, tmodel, mode, torch.as_tensor(warm_x), torch.as_tensor(warm_target))()
        step = make_torch_step(torch, tmodel, mode, torch.as_tensor(x_host), torch.as_tensor(target_host))
    else:
        loss, optimizer = nn.CrossEntropyLoss(), SGD(model.parameters(), lr=1e-3, momentum=0.9)
        make_step(mode, model, loss, optimizer, warm_x, warm_target)()
        step = make_step(mode, model, loss, optimizer, x_host, target_host)
    baseline = _rss_bytes("VmRSS")
    _reset_peak()
    step()
    step()
    return _rss_bytes("VmHWM") - baseline


def measure_memory(framework: str, name: str, mode: str, batch: int, size: int, dtype: str, threads: int) -> int | None:
    """``memory_probe`` in a subprocess (a fresh heap); None if it fails."""
    code = (
        f"from npresnet.bench.memory import memory_probe; print(memory_probe({framework!r}, {name!r}, {mode!r}, "
        f"{batch}, {size}, {dtype!r}, {threads}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(f"\n  memory probe failed ({framework}): {done.stderr.strip().splitlines()[-1:]}")
        return None
    return int(done.stdout.strip().splitlines()[-1])
