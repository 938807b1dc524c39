"""Atomic file writes: every file is written to a temporary name in its directory, synced and
renamed into place, so a reader never sees half a file (a kill leaves at most a ``.tmp-*`` file,
which ``RunStore`` removes when the run resumes).
"""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path

import numpy as np

TMP_PREFIX = ".tmp-"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions the process's umask gives a new
    file (0666 masked, as ``open()`` would: artifacts are meant to be shared)."""
    path = Path(path)
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
