"""Atomic file writes: a file is either its old version or its new one, never torn, and no debris.

::

    with atomic_write("run/checkpoint.npz") as f:      # a binary file object
        np.savez(f, **arrays)
    atomic_write_text("run/metrics.csv", text)

Every file npresnet writes (weights, checkpoints, metrics, plots) goes through here:

1. the data go to a temporary file in the destination's own folder (so the rename below never
   crosses file systems), named ``.<name>.<pid>.<random>.tmp``: recognisable, and naming the
   process that writes it, which also holds an exclusive ``flock`` on it while it writes;
2. ``flush`` and ``fsync`` put the bytes on disk;
3. ``os.replace`` renames it over the destination in one step (POSIX: readers see the old file or
   the new one, nothing between);
4. ``fsync`` of the folder makes the rename itself survive a power cut.

On an exception (a full disk, Ctrl-C) the temporary file is removed before the error goes on. A
writer killed outright (SIGKILL, a power cut) cannot clean up; its temporary file stays until the
next write of the same destination (or ``remove_stale_temporaries``, called when a run resumes)
deletes it. Only files of this naming pattern (and the ones earlier versions wrote) are touched,
and only when their writer is gone: its pid is not a live process on this machine *and* nobody
holds the file's lock. A live writer's
temporary file is never removed, even one of another process writing the same destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no locks; the pid check alone guards cleanup
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "atomic_write_text", "remove_stale_temporaries", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> str:
    """A fresh temporary path for ``path``: ``<folder>/.<name>.<pid>.<12 hex digits>.tmp``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _temporary_patterns(name: str) -> list[re.Pattern[str]]:
    """Names of ``name``'s temporary files: this module's, with the writer's pid as group 1, and those
    that earlier npresnet versions wrote: ``metrics.csv.<pid>.tmp``, ``curves.<pid>.tmp.png`` (pid in
    group 1 too) and ``.<name>.<12 hex digits>.tmp`` (no pid)."""
    root, ext = os.path.splitext(name)
    return [
        re.compile(rf"\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{12}}\.tmp"),
        re.compile(rf"{re.escape(name)}\.(\d+)\.tmp"),
        re.compile(rf"{re.escape(root)}\.(\d+)\.tmp{re.escape(ext)}"),
        re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.tmp"),
    ]


# A temporary file without a pid (an earlier version's) counts as abandoned once untouched this long:
# a live writer fsyncs and renames within seconds, and its writes keep the modification time fresh.
UNOWNED_QUIET_S = 600.0


def _writer_gone(match: re.Match[str], path: str) -> bool:
    if match.re.groups:
        return not _process_alive(int(match.group(1)))
    try:
        return time.time() - os.stat(path).st_mtime > UNOWNED_QUIET_S
    except FileNotFoundError:
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files of earlier writes of ``path`` whose writer is gone; returns their paths.

    A file is removed only if its name follows a pattern above, its pid is not a live process (a
    name without a pid: untouched for ``UNOWNED_QUIET_S``), and its ``flock`` can be taken (no live
    writer holds it, on this machine or over NFS).
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    patterns = _temporary_patterns(name)
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = next((m for m in (p.fullmatch(entry) for p in patterns) if m), None)
        candidate = os.path.join(directory, entry)
        if match is None or not _writer_gone(match, candidate):
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to open
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(candidate)
            removed.append(candidate)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOENT):
                raise
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``path`` atomically when the block ends without error."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    tmp_path = temporary_name(path)
    # Mode 0o666 lets the umask apply, as for a file opened normally (mkstemp's 0o600 would leave
    # the saved weights readable by their owner only).
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp_path, path)  # still locked: no cleaner can take it meanwhile
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    _fsync_directory(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
