"""One run per folder: an exclusive lock on ``<run folder>/.npresnet-run.lock`` while a run writes there.

::

    with RunFolderLock("runs/digits"):
        ...                                  # train, checkpoint, write metrics

Two runs started with the same ``--out`` would otherwise both train and take turns replacing
the checkpoint, and the last to finish would win. The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)``
on the lock file: a second run finds it taken and stops at once with ``RunFolderBusy``, naming
the folder and the holder's pid (which the holder writes into the file). The operating system
releases the lock when its process ends, however it ends (``kill -9`` included), so a stale lock
cannot block the next run; the file itself stays (removing it would let a third run lock a new
file while the second still holds the old one).
"""

from __future__ import annotations

import fcntl
import os
import time
from types import TracebackType

__all__ = ["LOCK_NAME", "RunFolderBusy", "RunFolderLock"]

LOCK_NAME = ".npresnet-run.lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def _holder_pid(fd: int, wait_s: float = 1.0) -> str:
    """The pid that the lock's holder writes into the file right after locking it. A run that lost
    the race by microseconds can look before that write (two runs started together did, once in
    five CI runs: "pid unknown"), so it waits up to ``wait_s`` for a whole line."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace")
        if text.endswith("\n") and text.strip():
            return text.strip()
        if time.monotonic() >= deadline:
            return text.strip() or "unknown"
        time.sleep(0.01)


class RunFolderLock:
    """Hold the exclusive lock of run folder ``folder`` (created if missing) inside a ``with`` block."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"{self.folder} is in use by another run (pid {holder}, which holds {self.path}); "
                "wait for it to finish, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
