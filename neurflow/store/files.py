"""Atomic file writes: every file is written to a temporary name in its directory, synced and
renamed into place, so a reader never sees half a file (a kill leaves at most a ``.tmp-*`` file,
which ``RunStore`` removes when the run resumes).  ``writing``: the writes of a block that fail
(disk full, read-only file system, no permission) as one line naming the directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import NeurFlowError

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def writing(parameter: str, directory) -> Iterator[None]:
    """An ``OSError`` in the block (``ENOSPC``, ``EROFS``, ``EACCES``...) as ``NeurFlowError(parameter,
    ...)`` naming ``directory``, the OS reason and the file: the writes are atomic, so every file
    there is whole (old or new) and the same command can be rerun once the directory is writable."""
    try:
        yield
    except OSError as exc:
        name = exc.filename
        with contextlib.suppress(TypeError, ValueError):
            name = Path(exc.filename).relative_to(directory).as_posix()
        raise NeurFlowError(
            parameter,
            "a writable directory",
            str(directory),
            f"{exc.strerror or type(exc).__name__}" + (f" writing {name}" if name else "") + "; every file there is "
            "whole (atomic writes): make room or make it writable, then rerun the same command",
        ) from None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions the process's umask gives a new
    file (0666 masked, as ``open()`` would: artifacts are meant to be shared).  An ``OSError`` names
    ``path`` (not the temporary file)."""
    path = Path(path)
    try:
        _write_and_rename(path, data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _write_and_rename(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False).encode())


def write_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())
