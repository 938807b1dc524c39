"""The lock of a run directory: an OS lock (``flock``) on ``DIR/.neurflow.lock``, which holds the
holder's pid while it is held.  ``RunStore`` holds it while a run is written; the commands that write into a
finished run (``label``, ``debug``, ``audit``, ``eval``, ``report``) hold it while they write
(``RunDir.updating``).  The OS drops it when the holder dies, crashed or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

from ..errors import NeurFlowError

log = logging.getLogger(__name__)

LOCK = ".neurflow.lock"  # flock()ed by the process writing the run; holds its pid
POLL_S = 0.05


class DirLock:
    """The exclusive lock of ``directory``, taken in the constructor or refused with
    ``NeurFlowError(parameter, ...)`` naming the holder's pid and ``hint``; ``wait``: seconds to
    wait for a holder first (0: refuse at once).  Held until ``release`` (or the ``with`` block's
    end, or the process's).  Not reentrant: a second lock of the same directory waits for the first,
    also in the same process.  ``OSError`` (a directory that cannot be written) is the caller's."""

    def __init__(self, directory, parameter: str, wait: float = 0.0, hint: str = ""):
        self.directory = directory
        self._fd: int | None = None
        fd = os.open(Path(directory) / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            self._take(fd, parameter, wait, hint)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock
            raise
        self._fd = fd

    def _take(self, fd: int, parameter: str, wait: float, hint: str) -> None:
        if fcntl is None:
            return
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise NeurFlowError(
                        parameter,
                        "a run directory no other process is writing",
                        str(self.directory),
                        f"another neurflow process is writing {self.directory} (pid {holder}); {hint}",
                    ) from None
                if not told:
                    told = True
                    log.info("waiting for pid %s, which is writing %s", holder, self.directory)
                time.sleep(POLL_S)
            except OSError as exc:  # a file system without locks (some network mounts): carry on unlocked
                log.debug("no lock on %s: %s", self.directory, exc)
                return

    def release(self) -> None:
        """Release the lock: the pid is taken out of the file (an unheld lock names no one, and a
        command that changed nothing leaves the directory byte for byte as it was), then closing
        the file releases the flock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
