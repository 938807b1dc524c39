"""The exemplar pool: every class image cut at several granularities (method.md section 1).

Crops are produced lazily by index, so the pool never has to sit in memory at once.
Pool order: granularity (as given), then image, then window in row-major (``unfold``) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DEFAULTS
from ..errors import NeurFlowError


def window_grid(size: int, side: int, stride_ratio: float) -> tuple[int, int]:
    """(stride, positions per axis) exactly as the published code computes them."""
    stride = max(min(int(side * stride_ratio), size - side), 1)
    return stride, (size - side) // stride + 1


@dataclass(frozen=True)
class CropPool:
    """Lazy pool of crops of ``images`` ([N, C, S, S])."""

    images: torch.Tensor
    granularities: tuple
    stride_ratio: float = DEFAULTS.stride_ratio
    # per crop, filled in by __post_init__: source image, side, top and left in px
    image_index: np.ndarray = field(init=False, repr=False)
    side: np.ndarray = field(init=False, repr=False)
    top: np.ndarray = field(init=False, repr=False)
    left: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != self.images.shape[-2]:
            raise NeurFlowError(
                "images",
                "a tensor [N, C, S, S] of square images",
                tuple(self.images.shape),
                "resize or centre-crop the images first",
            )
        size = self.images.shape[-1]
        image, side, top, left = [], [], [], []
        for g in self.granularities:
            s = int(g * size)
            if s < 1:
                raise NeurFlowError("granularities", f"fractions giving crops of at least 1 px at {size} px", g)
            if s == size:
                pos = [(0, 0)]
            else:
                stride, n = window_grid(size, s, self.stride_ratio)
                pos = [(r * stride, c * stride) for r in range(n) for c in range(n)]
            for i in range(self.images.shape[0]):
                for y, x in pos:
                    image.append(i)
                    side.append(s)
                    top.append(y)
                    left.append(x)
        object.__setattr__(self, "image_index", np.asarray(image, dtype=np.int64))
        object.__setattr__(self, "side", np.asarray(side, dtype=np.int64))
        object.__setattr__(self, "top", np.asarray(top, dtype=np.int64))
        object.__setattr__(self, "left", np.asarray(left, dtype=np.int64))

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def boxes(self) -> np.ndarray:
        """[N_pool, 4] (top, left, height, width) of each crop in its source image."""
        return np.stack([self.top, self.left, self.side, self.side], axis=1)

    def get(self, indices) -> torch.Tensor:
        """The crops ``indices`` (in the given order), each resized back to S x S."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = torch.empty((len(indices),) + tuple(self.images.shape[1:]), dtype=self.images.dtype)
        if len(indices) == 0:
            return out
        sides = self.side[indices]
        for s in np.unique(sides):
            rows = np.nonzero(sides == s)[0]
            idx = indices[rows]
            pieces = torch.stack(
                [
                    self.images[i, :, y : y + s, x : x + s]
                    for i, y, x in zip(self.image_index[idx], self.top[idx], self.left[idx])
                ]
            )
            if s != self.size:
                pieces = F.interpolate(pieces, size=self.size, mode="bilinear", align_corners=False)
            out[torch.from_numpy(rows)] = pieces
        return out

    def batches(self, batch_size: int, indices=None):
        """Yield (indices, crops) chunks over the pool (or over ``indices``)."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            yield idx, self.get(idx)
