"""``wds:PATTERN``: WebDataset tar shards, read as a map-style source without the webdataset package.

``PATTERN`` is expanded as webdataset expands it (``braceexpand``: ``data/train-{000..009}.tar``,
``{a,b}``); each name must be a tar file.  The shards are *indexed*, not decoded: one pass over
their headers gives every member's offset and size, and the samples are grouped as webdataset
groups them (the key is the member's path up to the first dot of its base name; the rest is the
extension): a sample's image is its ``jpg``/``jpeg``/``png``/``webp``/... member, its label the
integer in its ``cls`` member (when every sample has one).  An image is read by seeking to its
offset when asked.  The identity is the shard paths with their sizes and mtimes, the transform and
the channels; a sample without an image is skipped (counted).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..errors import NeurFlowError, counted
from .stream import ImageSource, Unreadable

log = logging.getLogger(__name__)
LABEL_EXT = "cls"


def expand(pattern: str) -> list[str]:
    """The shard names of ``pattern`` (brace expansion as webdataset does it)."""
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise NeurFlowError(
            "data", "the braceexpand package for wds: shard patterns", "not installed", "pip install 'neurflow[wds]'"
        ) from None
    return list(braceexpand(pattern))


def shard_paths(pattern: str) -> list[Path]:
    """The existing shards of ``pattern``; one line when it matches none or names a missing one."""
    names = expand(pattern)
    found = [Path(n) for n in names if Path(n).is_file()]
    if not found:
        raise NeurFlowError(
            "data",
            "wds:PATTERN naming tar shards (brace patterns: data/train-{000..009}.tar)",
            f"wds:{pattern}",
            f"the pattern matches no file ({counted(len(names), 'name')} expanded, e.g. {names[0]})",
        )
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise NeurFlowError(
            "data",
            "every shard of the pattern",
            f"wds:{pattern}",
            f"{counted(len(missing), 'shard')} missing: {missing[0]}",
        )
    return found


def _split(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, as webdataset splits it."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def index_shards(paths: list[Path], image_ext: set) -> tuple[list, list, int]:
    """([(shard, key, offset, size)] of each sample's image, [label or None], samples skipped)."""
    samples, labels, skipped = [], [], 0
    for s, path in enumerate(paths):
        try:
            with tarfile.open(path, "r:") as tar:
                groups: dict = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = _split(m.name)
                    g = groups.setdefault(key, {})
                    if ext == LABEL_EXT:
                        g["label"] = (tar.extractfile(m) or io.BytesIO(b"")).read().decode().strip()
                    elif "." + ext.rsplit(".", 1)[-1] in image_ext and "image" not in g:
                        g["image"] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError) as exc:
            raise NeurFlowError("data", "readable tar shards", str(path), str(exc)[:160]) from None
        for key, g in groups.items():
            if "image" not in g:
                skipped += 1
                log.warning("skipped sample %s of %s: no image member", key, path.name)
                continue
            samples.append((s, key) + g["image"])
            labels.append(int(g["label"]) if str(g.get("label", "")).lstrip("-").isdigit() else None)
    return samples, labels, skipped


class ShardImages(ImageSource):
    """The images of indexed tar shards, read by offset (``decode_bytes(data) -> [C, H, W]``)."""

    def __init__(self, paths: list[Path], samples: list, labels, decode: Callable[[bytes], torch.Tensor], how: str):
        super().__init__()
        self.paths, self.samples, self.labels, self.decode, self.how = paths, samples, labels, decode, how
        h = hashlib.sha256(how.encode())
        for p in paths:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        self._stamp = h.hexdigest()

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> torch.Tensor:
        s, _, offset, size = self.samples[index]
        try:
            with open(self.paths[s], "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise Unreadable(str(exc)) from None
        return self.decode(data)

    def identity(self) -> str:
        return "shards:" + self._stamp[:40]

    def cache_key(self) -> str:
        return self.identity()

    def describe(self) -> str:
        return f"{counted(len(self.paths), 'shard')} ({self.paths[0]}...)"

    def name_of(self, index: int) -> str:
        s, key = self.samples[index][:2]
        return f"{self.paths[s].name}:{key}"


def decode_bytes(data: bytes, fn, channels: int, to_mode) -> torch.Tensor:
    """Image bytes read into ``channels`` and prepared by ``fn``; ``Unreadable`` when PIL cannot."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            img = to_mode(im, channels)
            if min(img.size) < 8:
                raise ValueError("image smaller than 8 px")
            return fn(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise Unreadable(str(exc)) from None
