"""The writer lock: one ``flock`` on ``data/writer.lock`` orders every writer.

Taking the lock opens the lock file and makes one ``flock`` call; releasing it
closes the file (so a workspace deleted and made again, as ``atlas demo --reset``
does, never leaves a process locking the old file's inode). It is re-entrant within
a process (a recovery that holds it
can still record its receipt through a :class:`Ledger`), and exclusive
between processes. The kernel releases it when a process dies, so a killed
writer never leaves the workspace locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from ..errors import Conflict, StorageError

_registry: dict[str, tuple[int, int]] = {}  # path -> (fd, depth)
_guard = threading.RLock()


class WriterLock:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def acquire(self) -> None:
        _guard.acquire()
        try:
            held = _registry.get(self.path)
            if held is not None:
                _registry[self.path] = (held[0], held[1] + 1)
                return
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StorageError(f"cannot open the writer lock {self.path}: "
                                   f"{exc.strerror or exc}") from exc
            deadline = time.monotonic() + self.timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        os.close(fd)
                        raise StorageError(f"cannot take the writer lock {self.path}: "
                                           f"{exc.strerror or exc}") from exc
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise Conflict(
                            "another Atlas process holds the writer lock",
                            hint=f"Wait for it to finish; the lock is {self.path}.") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            _registry[self.path] = (fd, 1)
        except BaseException:
            _guard.release()
            raise

    def release(self) -> None:
        try:
            fd, depth = _registry[self.path]
            if depth > 1:
                _registry[self.path] = (fd, depth - 1)
            else:
                del _registry[self.path]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            _guard.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["WriterLock"]
