"""Which model factories this user ran into which run directory: the record that lets ``debug``,
``audit``, ``eval`` and ``label`` reopen a run's factory spec (``file.py:fn``, ``module:fn``)
without ``--trust-model-spec``.

A spec read from a run directory is data: the directory may be someone else's, or edited since.
The record lives outside it, in the user's cache (``$XDG_CACHE_HOME/neurflow/trusted``, one empty
file per entry), keyed by the run directory's resolved path, the spec and - for ``file.py:fn`` -
the file's SHA-256: a copied or moved directory, a changed spec or an edited factory file is not
trusted until the user names it again (``--model``) or passes ``--trust-model-spec``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """neurflow's cache folder: ``$XDG_CACHE_HOME/neurflow`` (default ``~/.cache/neurflow``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurflow"


def _key(directory, spec: str) -> str | None:
    h = hashlib.sha256()
    h.update(str(Path(directory).resolve()).encode() + b"\0" + spec.encode())
    path, colon, _ = spec.rpartition(":")
    if colon and path.endswith(".py"):
        try:
            h.update(b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError:
            return None  # the factory file is gone: nothing to trust
    return h.hexdigest()


def _entry(directory, spec: str) -> Path | None:
    key = _key(directory, spec)
    return cache_root() / "trusted" / key if key else None


def remember(directory, spec: str | None) -> None:
    """Record that the user ran ``spec`` into ``directory`` (a failure to record only costs the
    flag later: logged, not raised)."""
    entry = _entry(directory, spec) if spec else None
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.touch()
    except OSError as exc:
        log.debug("could not record the trusted model spec in %s: %s", entry.parent, exc)


def is_trusted(directory, spec: str) -> bool:
    """Whether this user ran ``spec`` (the same factory file) into ``directory``."""
    entry = _entry(directory, spec)
    return entry is not None and entry.is_file()
