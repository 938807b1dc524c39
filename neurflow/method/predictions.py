"""The prediction pass, once per model and data: the model's logits on every image, streamed, and
kept on disk so that runs of other classes, ``audit`` and ``atlas`` read them instead of decoding
the dataset again.

Where: ``cache_dir`` (``--cache-dir``), else the environment variable ``NEURFLOW_CACHE``, else
``$XDG_CACHE_HOME/neurflow`` (``~/.cache/neurflow``); ``predictions/KEY.npz`` there.  The key hashes the model's weights
(``model_hash``), its traced code (``LayerGraph.code``) and the data's cheap identity
(``ImageSource.cache_key``: a folder's relative paths, sizes and mtimes with its transform and
channels).  Only sources with such an identity are cached: a tensor's would mean hashing every
pixel (its predictions are computed in memory as before).

What: the logits as float16 (half the bytes; a relative error of 2**-11, far below the margins the
audit compares) unless one exceeds float16's range (then float32), and beside them each image's
predicted class, the argmax of the float32 logits, so that the class selection of a cached run is
exactly that of an uncached one; the unreadable images (their rows NaN) are recorded with them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..store.files import atomic_write
from .probe import logits, predicted_classes

log = logging.getLogger(__name__)
CACHE_ENV = "NEURFLOW_CACHE"
FORMAT = "predictions-v1"
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class Predictions:
    """The model's logits on the data, [N, classes] (NaN rows: images that could not be read), and
    the class each image is predicted as (the float32 argmax; -1 for an unreadable image)."""

    logits: torch.Tensor
    classes: torch.Tensor
    cached: bool = False  # read from the cache (no image was decoded for it)

    @classmethod
    def of(cls, logits: torch.Tensor) -> "Predictions":
        return cls(logits, predicted_classes(logits))

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])


def cache_root(cache_dir=None) -> Path:
    """neurflow's cache directory: ``cache_dir``, else ``$NEURFLOW_CACHE``, else
    ``$XDG_CACHE_HOME/neurflow``, else ``~/.cache/neurflow``."""
    given = cache_dir or os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "neurflow"


def cache_key(model_digest: str, code: str, data_key: str) -> str:
    return hashlib.sha256(f"{FORMAT}\n{model_digest}\n{code}\n{data_key}".encode()).hexdigest()[:40]


def cache_path(root: Path, key: str) -> Path:
    return root / "predictions" / f"{key}.npz"


def read_cached(path: Path, n: int) -> tuple[Predictions, np.ndarray] | None:
    """(predictions, unreadable indices) from ``path``, or None (absent, damaged or for another
    number of images: recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            lg, classes, bad = z["logits"], z["classes"], z["unreadable"]
    except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
        log.warning("prediction cache %s unreadable (%s): recomputed", path.name, exc)
        return None
    if lg.ndim != 2 or lg.shape[0] != n or classes.shape != (n,):
        return None
    logits = torch.from_numpy(lg.astype(np.float32))
    return Predictions(logits, torch.from_numpy(classes.astype(np.int64)), cached=True), bad.astype(np.int64)


def write_cached(path: Path, pred: Predictions, unreadable) -> None:
    """``pred`` saved atomically (float16 logits where they fit, see the module docstring)."""
    lg = pred.logits.numpy()
    finite = lg[np.isfinite(lg)]
    small = finite.size == 0 or float(np.abs(finite).max()) <= FLOAT16_MAX
    buf = io.BytesIO()
    np.savez(
        buf,
        logits=lg.astype(np.float16) if small else lg.astype(np.float32),
        classes=pred.classes.numpy().astype(np.int32),
        unreadable=np.asarray(sorted(unreadable), dtype=np.int64),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


def predict(model_fn, source, model_digest: str, code: str, *, batch_size: int, device, workers: int,
            cache_dir=None, quiet: bool = True) -> Predictions:  # fmt: skip
    """The predictions of ``model_fn`` (the traced model) on every image of ``source``: from the
    cache when this model and data were predicted before, else one streamed pass (then cached)."""
    key = source.cache_key()
    path = cache_path(cache_root(cache_dir), cache_key(model_digest, code, key)) if key else None
    found = read_cached(path, len(source)) if path is not None else None
    if found is not None:
        pred, bad = found
        source.unreadable.update(int(i) for i in bad)
        log.info("predictions of the %d images read from the cache (%s)", len(source), path)
        return pred
    out = logits(model_fn, source, batch_size=batch_size, device=device, finite=True, workers=workers, quiet=quiet)
    check = getattr(source, "check_unchanged", None)
    if check is not None:
        check()
    if source.unreadable:
        log.warning("skipped %d unreadable image(s) of %d", len(source.unreadable), len(source))
    pred = Predictions.of(out)
    if path is not None:
        try:
            write_cached(path, pred, source.unreadable)
        except OSError as exc:  # a read-only or full cache directory costs the reuse, not the run
            log.warning("prediction cache not written (%s): %s", path.parent, exc)
    return pred
