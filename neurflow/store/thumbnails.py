"""Crop thumbnails as PNG, and how images are scaled for display."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

THUMB = 64


def display_range(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) used to show ``images``: [0, 1] when they already lie in it,
    else their range over the whole set (normalised inputs)."""
    x = images.detach().float()
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    if 0 <= float(lo.min()) and float(hi.max()) <= 1:
        return torch.zeros_like(lo), torch.ones_like(hi)
    return lo, hi


def to_uint8(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] floats -> [N, H, W, 3] uint8 (grey repeated to RGB, a 4th channel dropped)."""
    x = ((x.detach().float() - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    x = (x * 255).round().byte()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x[:, :3].permute(0, 2, 3, 1).numpy()


def thumbnails(pool, indices, max_px: int | None = THUMB) -> dict:
    """PNG bytes of the crops ``indices`` (as the model saw them: each resized to the pool's image
    size), at most ``max_px`` px a side (None: at the model's resolution)."""
    out: dict[int, bytes] = {}
    if not len(indices):
        return out
    lo, hi = display_range(pool.images)
    for idx, crops in pool.batches(64, indices):
        for i, a in zip(idx, to_uint8(crops, lo, hi)):
            img = Image.fromarray(a)
            if max_px and img.size[0] > max_px:
                img = img.resize((max_px, max_px), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            out[int(i)] = buf.getvalue()
    return out
