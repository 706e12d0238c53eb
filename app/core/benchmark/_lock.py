"""One writer per run folder: an OS file lock on ``OUT/run.lock`` held for the whole run.

The lock is the kernel's (``fcntl.flock``; ``msvcrt.locking`` on Windows), so it goes away with
the process: a run killed with ``kill -9`` never leaves a stale lock. The file itself stays and
only records the pid of the last holder, for the message a second writer gets.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.core.errors import RunFolderBusyError

__all__ = ["RunLock"]


class RunLock:
    """Exclusive, non-blocking lock of a run folder.

    Raises
    ------
    RunFolderBusyError
        On :meth:`acquire` when another process holds it (the message names the folder and
        that process's pid).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "run.lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunFolderBusyError(
                f"{self.out_dir}: another benchmark ({who}) is writing to this run folder; "
                "wait for it to finish (or stop it), or choose another --out folder"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except (OSError, AttributeError):  # the pid is only for the message; the lock is what counts
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                _unlock(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, AttributeError):
        return None


try:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
