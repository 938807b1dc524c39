"""Images to debug: an index into the run's data or an image file, prepared like the run's inputs."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..circuit import Circuit
from ..errors import NeurFlowError
from ..sources.datasets import IMAGE_EXT, PIL_MODES, imagenet_transform, plain_transform, to_mode


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
    i, n = int(index), len(data.images)
    if not 0 <= i < n:
        raise NeurFlowError("image", f"an index in 0..{n - 1} into the run's data", index)
    x, kept = data.images.take([i])
    if not len(kept):
        raise NeurFlowError(
            "image", "a readable image of the run's data", index, f"{data.images.name_of(i)} is unreadable"
        )
    return x[0]


def read_image(path: str, circuit: Circuit) -> torch.Tensor:
    """An image file prepared like the run's inputs: read as greyscale or RGB as the run's images
    were (its channel count), then the ImageNet preset when the run used it, else the pixels
    scaled to [0, 1] and resized to its image size.  Returns [C, S, S]."""
    p = Path(path)
    if not p.is_file():
        raise NeurFlowError("image", "an image file or an index into the run's data", path, "no such file")
    if p.suffix.lower() not in IMAGE_EXT:
        raise NeurFlowError("image", "an image file (" + ", ".join(sorted(IMAGE_EXT)) + ")", path)
    prov = circuit.provenance
    size, channels = prov.image_size or 224, prov.image_channels or 3
    if channels not in PIL_MODES:
        raise NeurFlowError(
            "image",
            "an index into the run's data",
            path,
            f"the run's images have {channels} channels; files give 1 or 3",
        )
    try:
        with Image.open(p) as im:
            img = to_mode(im, channels)
            if prov.transform == "imagenet":
                x = imagenet_transform(img)
            else:
                x = plain_transform(img.resize((size, size), Image.Resampling.BILINEAR))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise NeurFlowError("image", "a readable image file", path, str(exc)[:160]) from None
    if x.shape[-1] != size:
        raise NeurFlowError(
            "image", f"an image that the run's transform makes {size} px", path, f"it gives {x.shape[-1]} px"
        )
    return x
