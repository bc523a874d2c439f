"""``World``: the ranks of one data-parallel job (rank, size) and its bounded-time MPI collectives.

mpi4py is imported lazily, when a world of more than one process is made (``init_distributed``);
``SINGLE_PROCESS`` (``World(None)``) never touches MPI. Every collective is started non-blocking and
polled against a deadline (``timeout``), so a rank that hangs or dies ends the job with a message
instead of a silent wait.
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

import numpy as np

__all__ = ["ABORT_GRACE_S", "DEFAULT_TIMEOUT_S", "SINGLE_PROCESS", "World", "current_world", "init_distributed"]

DEFAULT_TIMEOUT_S = 300.0
ABORT_GRACE_S = 0.5  # pause between printing why and MPI_Abort, so the message is not lost


def _import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "--distributed needs mpi4py and an MPI runtime: pip install 'npresnet[mpi]' (mpi4py and "
            "the mpich wheel), then run: mpiexec -n 2 python -m npresnet.train --distributed ...",
        ) from exc
    return MPI


class World:
    """The ranks of one data-parallel job: ``rank``, ``size`` and bounded-time collectives.

    ``World(None)`` is a single process: every collective returns its input unchanged and MPI is
    never touched. Collectives take contiguous NumPy arrays and work in place where the name ends
    in ``_``. Each one is started non-blocking and polled; if it has not completed after
    ``timeout`` seconds (a rank hung or died), ``abort`` ends the whole job with a message.
    """

    def __init__(self, comm: Any = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.comm, self.timeout = comm, float(timeout)
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._MPI: Any = None if comm is None else _import_mpi()  # the mpi4py.MPI module (untyped)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes checkpoints, metrics and plots."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, timeout={self.timeout:g}s)"

    # ------------------------------------------------------------------ failure
    def abort(self, message: str | None = None, code: int = 1) -> None:
        """Print ``message`` (to stderr, with this rank) and end every rank of the job (``MPI_Abort``)."""
        if message:
            print(f"[rank {self.rank}/{self.size}] npresnet.distributed: {message}", file=sys.stderr, flush=True)
        if self.comm is None:
            raise RuntimeError(message or "aborted")
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every process at once; output still in flight through its
        # I/O forwarding is lost with them (seen: about 1 run in 3 lost the message above). A moment's
        # pause lets the message reach the terminal first.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def wait(self, requests: list[Any], what: str) -> None:
        """Poll the MPI ``requests`` (of non-blocking collectives) until all complete; past the deadline,
        abort naming ``what``.

        Polling backs off from immediate re-tests to sleeps of at most 1 ms, so a rank waiting for a
        slower one does not steal its CPU (two ranks often share fewer real cores than they think).
        """
        MPI = self._MPI
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                self.abort(
                    f"{what} did not complete within {self.timeout:g} s: another rank has died or hung "
                    "(see its output above). Stopping all ranks; the last checkpoint is intact, continue "
                    "with --resume.",
                    code=3,
                )
            if pause:
                time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 2e-5)

    # ------------------------------------------------------------------ collectives
    def allreduce_(self, buffer: np.ndarray, op: str = "sum", what: str = "allreduce") -> np.ndarray:
        """Reduce a contiguous NumPy ``buffer`` over all ranks, in place (``op``: sum | max | min)."""
        if self.comm is None:
            return buffer
        _check_buffer(buffer, what)
        MPI = self._MPI
        ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        if op not in ops:
            raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
        self.wait([self.comm.Iallreduce(MPI.IN_PLACE, buffer, op=ops[op])], what)
        return buffer

    def start_sum_(self, buffer: np.ndarray, what: str = "allreduce") -> Any:
        """Start summing a contiguous NumPy ``buffer`` over all ranks, in place, without waiting.

        Returns the MPI request: hand it (with others, so that several sums are in flight together)
        to ``wait``. Needs a world of more than one process.
        """
        if self.comm is None:
            raise RuntimeError("start_sum_ needs an MPI world; a single process has nothing to sum over")
        _check_buffer(buffer, what)
        return self.comm.Iallreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)

    def broadcast_(self, buffer: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Overwrite ``buffer`` on every rank with rank ``root``'s, in place."""
        if self.comm is None:
            return buffer
        _check_buffer(buffer, what)
        self.wait([self.comm.Ibcast(buffer, root=root)], what)
        return buffer

    def allgather(self, array: np.ndarray, what: str = "allgather") -> np.ndarray:
        """(size, *array.shape): every rank's ``array``, in rank order."""
        array = np.ascontiguousarray(array)
        if self.comm is None:
            return array[None].copy()
        out = np.empty((self.size, *array.shape), dtype=array.dtype)
        self.wait([self.comm.Iallgather(array, out)], what)
        return out

    def broadcast_object(self, obj: Any, root: int = 0, what: str = "broadcast of an object") -> Any:
        """Rank ``root``'s Python object (pickled; the ranks of one job trust each other) on every rank."""
        if self.comm is None:
            return obj
        payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        length = np.array([0 if payload is None else payload.size], dtype=np.int64)
        self.broadcast_(length, root, what)
        buffer = payload.copy() if payload is not None else np.empty(int(length[0]), dtype=np.uint8)
        self.broadcast_(buffer, root, what)
        return obj if self.rank == root else pickle.loads(buffer.tobytes())

    def sum(self, *values: float, what: str = "sum of statistics") -> tuple[float, ...]:
        """Each number summed over all ranks (float64); a single process returns them unchanged."""
        if self.comm is None:
            return values
        return tuple(float(v) for v in self.allreduce_(np.array(values, dtype=np.float64), "sum", what))

    def max(self, *values: float, what: str = "max of statistics") -> tuple[float, ...]:
        """Each number's maximum over all ranks; a single process returns them unchanged."""
        if self.comm is None:
            return values
        return tuple(float(v) for v in self.allreduce_(np.array(values, dtype=np.float64), "max", what))

    def barrier(self) -> None:
        if self.comm is not None:
            self.wait([self.comm.Ibarrier()], "barrier")


def _check_buffer(buffer: Any, what: str) -> None:
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
        kind = type(buffer).__name__ if not isinstance(buffer, np.ndarray) else "non-contiguous ndarray"
        raise TypeError(f"{what}: MPI buffers must be C-contiguous NumPy arrays, got a {kind}")


SINGLE_PROCESS = World(None)
_current: World | None = None


def init_distributed(timeout: float = DEFAULT_TIMEOUT_S) -> World:
    """The world of ``MPI.COMM_WORLD`` (initialising MPI through mpi4py); size 1 without ``mpiexec``.

    Raises ImportError (saying what to install) when mpi4py is missing. Calling it again returns
    the same world (with the new timeout).
    """
    global _current
    MPI = _import_mpi()
    if _current is None or _current.comm is None:
        _current = World(MPI.COMM_WORLD, timeout)
    _current.timeout = float(timeout)
    return _current


def current_world() -> World | None:
    """The world ``init_distributed`` made, or None if MPI was never initialised here."""
    return _current
