"""One agent per store: an exclusive ``flock`` on ``<store>.lock``, released by the kernel when
the process dies (kill -9 included), so a stale lock never blocks a restart."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from meterd.errors import AlreadyRunning


class StoreLock:
    def __init__(self, store_path: str | os.PathLike) -> None:
        self.path = Path(str(store_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another agent (pid {holder}) is already metering into {str(self.path)[:-5]}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
