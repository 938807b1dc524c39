"""Images as a *source*: listed up front, decoded on demand, in batches, never held whole.

A source is a map-style ``torch.utils.data.Dataset`` (``source[i]`` is one image [C, H, W]) with
what the pipeline asks of it besides: ``labels`` (cheap, without decoding), ``identity()`` (a
cheap, safe key of the data: it keys the prediction cache), ``take(indices)`` (the images a run
keeps, e.g. the class images) and ``batches(...)`` (the whole dataset once, for the prediction
pass, decoded by a ``DataLoader``'s worker processes).  Three kinds:

* ``TensorImages``: a tensor already in memory (or memory-mapped from a ``.pt`` file);
* ``FolderImages``: image files, listed (relative paths, sizes, mtimes) and decoded when asked;
* ``TorchImages``: any map-style ``torch.utils.data.Dataset`` giving an image or (image, label).

An image a source cannot read (a corrupt file met mid-stream) is skipped and counted
(``unreadable``), as reading a folder always did; its predictions are NaN rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import NeurFlowError, counted
from ..progress import progress
from ..store.identity import hash_tensors

log = logging.getLogger(__name__)


class Unreadable(Exception):
    """An image the source cannot read (its message says why)."""


def default_workers() -> int:
    """The decoding worker processes by default: one CPU is left to the model, at most 8 workers
    (0, decoding in process, on a single CPU)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1))


class ImageSource(torch.utils.data.Dataset):
    """The interface (see the module docstring).  Subclasses implement ``__len__``, ``read`` and
    ``identity``; ``labels`` is a long tensor (or None), one per image."""

    labels: torch.Tensor | None = None

    def __init__(self) -> None:
        self.unreadable: set[int] = set()
        self._shape: tuple | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> torch.Tensor:
        """Image ``index`` as a float tensor [C, H, W]; ``Unreadable`` when it cannot be read."""
        raise NotImplementedError

    def identity(self) -> str:
        raise NotImplementedError

    def cache_key(self) -> str | None:
        """``identity()`` where it is cheap (no pixel read): the prediction cache keys on it; None
        where it would mean reading the images (a tensor: its predictions are not cached)."""
        return None

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read(int(index))

    # -- what the pipeline asks ------------------------------------------------------------
    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of the images (read off the first readable one)."""
        if self._shape is None:
            for i in range(len(self)):
                try:
                    self._shape = tuple(self.read(i).shape)
                    break
                except Unreadable as exc:
                    self._skip(i, exc)
            else:
                raise NeurFlowError("data", "at least one readable image", self.describe(), "all are unreadable")
        return self._shape

    @property
    def shape(self) -> tuple:
        """(N, C, H, W): N the images listed (unreadable ones among them)."""
        return (len(self),) + tuple(self.image_shape)

    def describe(self) -> str:
        return type(self).__name__

    def take(self, indices) -> tuple[torch.Tensor, np.ndarray]:
        """(images [n, C, H, W], the indices read): ``indices`` in order, the unreadable ones left
        out (and counted)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out, kept = [], []
        for i in idx.tolist():
            try:
                out.append(self._checked(self.read(i), i))
            except Unreadable as exc:
                self._skip(i, exc)
                continue
            kept.append(i)
        if not out:
            return torch.zeros((0,) + tuple(self.image_shape)), np.zeros(0, dtype=np.int64)
        return torch.stack(out), np.asarray(kept, dtype=np.int64)

    def decoded(self) -> torch.Tensor:
        """Every readable image in one tensor: for small data (and tests) only, since holding the
        whole dataset is what a source avoids."""
        return self.take(range(len(self)))[0]

    def batches(self, batch_size: int, workers: int = 0, desc: str = "", quiet: bool = True,
                indices: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:  # fmt: skip
        """(indices, images [b, C, H, W]) over ``indices`` (default: all), in order, ``batch_size``
        at a time (fewer where images were unreadable), decoded by ``workers`` processes (0: in
        this one); a progress bar in images/s unless ``quiet``."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        with progress(len(order), desc, quiet, unit="img") as bar:
            for idx, (kept, stacked, items) in self._decoded(order, batch_size, workers):
                for i, err in items:  # the unreadable ones (or, images of unequal sizes, every item)
                    if isinstance(err, str):
                        self._skip(i, Unreadable(err))
                bar.update(len(idx))
                if stacked is not None:  # one tensor from the worker (one shared-memory block)
                    self._checked(stacked[0], int(kept[0]))
                    yield kept, stacked.float() if stacked.dtype != torch.float32 else stacked
                    continue
                good = [(i, self._checked(x, i)) for i, x in items if isinstance(x, torch.Tensor)]
                if good:
                    yield np.asarray([i for i, _ in good], dtype=np.int64), torch.stack([x for _, x in good])

    def _decoded(self, order: np.ndarray, batch_size: int, workers: int):
        """(indices, [(index, image or None, error)]) per batch of ``order``."""
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if workers <= 0:
            for c in chunks:
                yield c, _collate([_read_safe(self, int(i)) for i in c])
            return
        loader = torch.utils.data.DataLoader(
            _Safe(self), batch_sampler=[c.tolist() for c in chunks], num_workers=workers, collate_fn=_collate
        )
        yield from zip(chunks, loader)

    def _checked(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise NeurFlowError(
                "images", "images as float tensors [C, H, W]", getattr(x, "shape", type(x).__name__),
                f"item {index} of {self.describe()}",
            )  # fmt: skip
        if self._shape is None:
            self._shape = tuple(x.shape)
        elif tuple(x.shape) != self._shape:
            raise NeurFlowError(
                "transform",
                "images of one size, or the 'imagenet' transform",
                f"image {index} of {tuple(x.shape)} after others of {self._shape}",
                f"{self.describe()}: use {{p:transform}} imagenet (image files), or resize the images",
            )
        return x if x.dtype == torch.float32 else x.float()

    def _skip(self, index: int, exc) -> None:
        if index not in self.unreadable:
            self.unreadable.add(index)
            log.warning("skipped %s: %s", self.name_of(index), exc)

    def name_of(self, index: int) -> str:
        return f"image {index}"


def _read_safe(source: ImageSource, i: int):
    try:
        return i, source.read(i), ""
    except Unreadable as exc:
        return i, None, str(exc)


class _Safe(torch.utils.data.Dataset):
    """What a ``DataLoader`` worker reads: (index, image or None, error), never raising for an
    unreadable image (the main process counts it)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return _read_safe(self.source, int(i))


def _collate(items):
    """A batch of ``_read_safe`` items as (indices read, their images stacked, [(index, error)]): one
    tensor crosses from a worker, not one per image; images of unequal sizes come back unstacked,
    as (None, None, [(index, image or error)]), for the main process to refuse."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, x, err in items if x is None]
    if good and len({tuple(x.shape) for _, x in good}) == 1:
        return np.asarray([i for i, _ in good], dtype=np.int64), torch.stack([x for _, x in good]), bad
    return None, None, bad + good


class TensorImages(ImageSource):
    """Images already in a tensor [N, C, H, W] (memory-mapped where the ``.pt`` file allowed it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise NeurFlowError("images", "a float tensor [N, C, H, W]", getattr(images, "shape", type(images)))
        self.tensor = images
        self.labels = labels
        self._shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def read(self, index: int) -> torch.Tensor:
        return self.tensor[index]

    def identity(self) -> str:
        return hash_tensors([("images", self.tensor)])

    def take(self, indices) -> tuple[torch.Tensor, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return self.tensor[torch.from_numpy(idx)], idx

    def decoded(self) -> torch.Tensor:
        return self.tensor

    def batches(self, batch_size: int, workers: int = 0, desc: str = "", quiet: bool = True, indices=None):
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            for s in range(0, len(idx), batch_size):
                yield idx[s : s + batch_size], self.tensor[torch.from_numpy(idx[s : s + batch_size])]
            return
        for s in range(0, len(self), batch_size):  # slices: no copy, the batches fit() always made
            yield np.arange(s, min(s + batch_size, len(self))), self.tensor[s : s + batch_size]

    def describe(self) -> str:
        return f"a tensor of {counted(len(self), 'image')}"


class FolderImages(ImageSource):
    """Image files under ``root`` (``files``: relative paths), read by ``decode(path)`` when asked.
    The identity is the sorted relative paths with their sizes and mtimes, the transform and the
    channels: a changed, added or removed file gives another key, without reading a pixel."""

    def __init__(self, root: Path, files: Sequence[str], labels: torch.Tensor | None,
                 decode: Callable[[Path], torch.Tensor], how: str):  # fmt: skip
        super().__init__()
        self.root, self.files, self.labels, self.decode, self.how = Path(root), list(files), labels, decode, how
        self._stamp = self._stat()

    def _stat(self) -> str:
        h = hashlib.sha256(self.how.encode())
        for f in self.files:
            try:
                st = (self.root / f).stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{f}\0missing\n".encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> torch.Tensor:
        return self.decode(self.root / self.files[index])

    def identity(self) -> str:
        return "files:" + self._stamp[:40]

    def cache_key(self) -> str:
        return self.identity()

    def check_unchanged(self) -> None:
        """Refuse a folder whose files changed since it was listed (during the run)."""
        if self._stat() != self._stamp:
            raise NeurFlowError(
                "data",
                "a folder that does not change during the run",
                str(self.root),
                "files were added, removed or rewritten while it was read; run again once it is complete",
            )

    def describe(self) -> str:
        return str(self.root)

    def name_of(self, index: int) -> str:
        return self.files[index]


class TorchImages(ImageSource):
    """A map-style ``torch.utils.data.Dataset`` whose items are an image [C, H, W] or a tuple
    (image, label, ...).  Labels come from its ``targets`` attribute (torchvision's datasets) when
    it has one, else from a pass over it (``read_labels``)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        targets = getattr(dataset, "targets", None)
        self.labels = torch.as_tensor(np.asarray(targets)).long() if targets is not None else None
        self._has_labels: bool | None = True if targets is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        return x

    def label(self, index: int):
        item = self.dataset[index]
        return int(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else None

    def read_labels(self) -> torch.Tensor | None:
        """The labels of every item (one pass over the dataset when it has no ``targets``)."""
        if self._has_labels is None:
            found = [self.label(i) for i in range(len(self))]
            self._has_labels = all(v is not None for v in found)
            self.labels = torch.tensor(found).long() if self._has_labels else None
        return self.labels

    def identity(self) -> str:
        return hash_tensors([("images", self.take(range(len(self)))[0])])

    def describe(self) -> str:
        return f"{type(self.dataset).__name__} of {counted(len(self), 'item')}"


def as_source(images) -> ImageSource:
    """``images`` as a source: a source as it is, a tensor [N, C, H, W], a neurflow ``Dataset``
    (its images) or a map-style ``torch.utils.data.Dataset``."""
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, torch.Tensor):
        return TensorImages(images)
    inner = getattr(images, "images", None)
    if isinstance(inner, ImageSource):  # a neurflow Dataset
        return inner
    if isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        return TorchImages(images)
    raise NeurFlowError(
        "images",
        "a float tensor [N, C, H, W], a map-style torch Dataset of images, or a neurflow data source",
        getattr(images, "shape", type(images).__name__),
    )
