"""MPI ranks must agree on the run: every rank's settings are compared before anything starts.

Only the model, optimizer and schedule state are broadcast from rank 0; every other setting each
rank reads from its own command line. Ranks that disagree would train silently wrongly (another
``--seed`` shuffles other shards), hang in a collective (another ``--batch`` or ``--epochs``
makes another number of steps; ``--sync-bn`` on one rank only), or crash inside MPI (another
``--model`` or ``--dtype`` broadcasts buffers of other sizes). So, at start-up::

    check_ranks_agree(world, config, resume=..., overwrite=...)

makes one ``allgather`` of a SHA-256 digest of the settings. Equal digests: nothing more is sent.
Different ones: each rank's settings are exchanged (a broadcast from each rank; the job is
stopping anyway) and every rank raises the same ``RanksDisagree``, naming each differing option
and each rank's value, so the job ends at once instead of at ``--dist-timeout``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from ..distributed import World
from .config import TrainConfig

__all__ = ["PER_PROCESS_SETTINGS", "RanksDisagree", "check_ranks_agree"]

# Settings that only change how one process shows or feeds its work, not the computation.
PER_PROCESS_SETTINGS = ("progress", "prefetch")


class RanksDisagree(ValueError):
    """The ranks of one MPI job were started with different settings (raised on every rank)."""


def _flags() -> dict[str, str]:
    return {f.name: f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}


def check_ranks_agree(world: World, config: TrainConfig, **invocation: Any) -> None:
    """Raise ``RanksDisagree`` on every rank unless all ranks have the same ``config`` and ``invocation``
    (e.g. ``resume=True, overwrite=False``); a single process returns at once."""
    if world.size == 1:
        return
    settings = {k: v for k, v in config.to_dict().items() if k not in PER_PROCESS_SETTINGS}
    settings.update({f"--{name}": value for name, value in invocation.items()})
    text = json.dumps(settings, sort_keys=True, default=repr)
    digest = np.frombuffer(hashlib.sha256(text.encode("utf-8")).digest(), dtype=np.uint8)
    digests = world.allgather(digest, what="comparison of the ranks' settings")
    if (digests == digests[0]).all():
        return
    every = [world.broadcast_object(settings, root=r, what="exchange of differing settings") for r in range(world.size)]
    flags = _flags()
    differing = []
    for key in sorted({k for s in every for k in s}):
        values = [s.get(key) for s in every]
        if any(json.dumps(v, default=repr) != json.dumps(values[0], default=repr) for v in values):
            shown = ", ".join(f"rank {r} {v!r}" for r, v in enumerate(values))
            differing.append(f"{flags.get(key, key)}: {shown}")
    raise RanksDisagree(
        f"the {world.size} MPI ranks were started with different settings, so they cannot train "
        f"one model together: {'; '.join(differing)}. Start every rank with the same options."
    )
