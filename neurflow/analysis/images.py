"""Images to debug: an index into the run's data or an image file, prepared like the run's inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..circuit import Circuit
from ..errors import NeurFlowError
from ..sources.datasets import IMAGE_EXT, imagenet_transform, to_rgb


def shrink_png(data: bytes, max_px: int | None) -> bytes:
    """PNG ``data`` resized to at most ``max_px`` px a side (unchanged when it is that small)."""
    if not max_px:
        return data
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_px:
            return data
        w, h = im.size
        s = max_px / max(w, h)
        small = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def image_from_data(index, data) -> torch.Tensor:
    """Image ``index`` of a ``Dataset``."""
    i, n = int(index), data.images.shape[0]
    if not 0 <= i < n:
        raise NeurFlowError("image", f"an index in 0..{n - 1} into the run's data", index)
    return data.images[i]


def read_image(path: str, circuit: Circuit) -> torch.Tensor:
    """An image file prepared like the run's inputs: the ImageNet preset when the run used it,
    else the pixels scaled to [0, 1], converted to the run's channel count and resized to its
    image size.  Returns [C, S, S]."""
    p = Path(path)
    if not p.is_file():
        raise NeurFlowError("image", "an image file or an index into the run's data", path, "no such file")
    if p.suffix.lower() not in IMAGE_EXT:
        raise NeurFlowError("image", "an image file (" + ", ".join(sorted(IMAGE_EXT)) + ")", path)
    prov = circuit.provenance
    size, channels = prov.image_size or 224, prov.image_channels or 3
    try:
        with Image.open(p) as im:
            if prov.transform == "imagenet":
                x = imagenet_transform(to_rgb(im))
            else:
                img = (
                    to_rgb(im).convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
                )
                a = np.asarray(img, dtype=np.float32) / 255.0
                x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise NeurFlowError("image", "a readable image file", path, str(exc)[:160]) from None
    if x.shape[-1] != size:
        raise NeurFlowError(
            "image", f"an image that the run's transform makes {size} px", path, f"it gives {x.shape[-1]} px"
        )
    return x
