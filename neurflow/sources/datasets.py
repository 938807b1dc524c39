"""Read a DATA spec, through a registry of schemes:

* ``SCHEME:NAME`` - a registered scheme (``register_data_scheme``; plugins register theirs, see
  ``neurflow.schemes``);
* otherwise a path: an image folder (ImageFolder layout or flat) or a ``.pt`` file holding an
  image tensor [N, 3, H, W] or a dict with ``images`` and ``labels``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import NeurFlowError
from ..options import TRANSFORMS
from .schemes import DATA_SCHEMES

log = logging.getLogger(__name__)
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Dataset:
    images: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: list | None = None
    files: list | None = None
    skipped: int = 0
    spec: str = ""
    info: dict = field(default_factory=dict)  # extras a data source records (e.g. a marked subset)
    transform: str | None = None  # the preset the images were prepared with (None: as stored)


def imagenet_transform(img: Image.Image) -> torch.Tensor:
    """torchvision's ``Resize(256)`` + ``CenterCrop(224)`` + ``ToTensor`` + ``Normalize`` (ImageNet
    statistics) on a PIL image, to the pixel, without importing torchvision (an optional
    dependency): the shorter side becomes 256 and the longer ``int(256 * long / short)`` (truncated,
    as torchvision), PIL bilinear (antialiased, as torchvision on PIL images), then the 224 crop at
    ``int(round((size - 224) / 2))`` (Python's round, as torchvision)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB.  16-bit greyscale (PNG, TIFF: modes ``I;16*`` and ``I``) is scaled by
    its bit depth (``convert`` would clip it at 255: nearly white); 16-bit RGB is read as 8-bit
    by PIL already."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float64)
        depth = 65535.0 if img.mode != "I" or a.max(initial=0) <= 65535 else float(2**32 - 1)
        img = Image.fromarray(np.clip(np.round(a / depth * 255), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def plain_transform(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


# the registry and its functions live in schemes.py (no torch there: `neurflow --help` reads it)
_SCHEMES = DATA_SCHEMES


def load_data(spec: str, transform: str | None = None) -> Dataset:
    """``transform`` ("imagenet" or "none") applies to image folders; a scheme's data comes
    prepared by the scheme."""
    if transform is not None and transform not in TRANSFORMS:
        raise NeurFlowError("transform", " or ".join(TRANSFORMS), transform)
    if not isinstance(spec, str) or not spec:
        raise NeurFlowError("data", "a data spec (an image folder, a .pt file or SCHEME:NAME)", spec)
    found = _SCHEMES.lookup(spec)
    if found is not None:
        loader, rest = found
        data = loader(rest)
        if not isinstance(data, Dataset):
            raise NeurFlowError("data", "a scheme loader returning a Dataset", spec, type(data).__name__)
        return data
    path = Path(spec)
    if not path.exists():
        schemes = _SCHEMES.names()
        hint = "no such file or directory"
        if ":" in spec and schemes:
            hint += f"; the schemes are {', '.join(s + ':' for s in schemes)}"
        raise NeurFlowError("data", "an image folder or a .pt file", spec, hint)
    if path.is_file():
        return _from_pt(path)
    return _from_folder(path, transform or "imagenet")


def _from_pt(path: Path) -> Dataset:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise NeurFlowError(
            "data",
            "a .pt file holding a tensor or a dict of tensors (weights_only)",
            str(path),
            str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unreadable",
        ) from None
    labels = names = None
    if isinstance(obj, dict):
        if "images" not in obj:
            raise NeurFlowError("data", "a dict with an 'images' tensor", sorted(obj)[:5])
        images, labels, names = obj["images"], obj.get("labels"), obj.get("class_names")
    else:
        images = obj
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise NeurFlowError("data", "an image tensor [N, 3, H, W]", getattr(images, "shape", type(images)))
    if images.shape[0] == 0:
        raise NeurFlowError("data", "at least one image", "an empty tensor")
    if images.dtype == torch.uint8:  # pixel values 0..255: scaled as --transform none scales image files
        log.info("data: uint8 images in %s scaled to [0, 1] (divided by 255)", path.name)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    elif images.shape[1] == 4:
        images = images[:, :3]
    if labels is not None:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (images.shape[0],):
            raise NeurFlowError(
                "data",
                f"one label per image ({images.shape[0]} images)",
                f"labels of shape {list(labels.shape)}",
                f"{path.name}: 'labels' must be a 1-D tensor as long as 'images'",
            )
    return Dataset(images, labels, list(names) if names else None, spec=str(path))


def _from_folder(path: Path, transform: str) -> Dataset:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, int | None]] = []
    if subdirs:
        names = [d.name for d in subdirs]
        for index, d in enumerate(subdirs):
            entries += [(f, index) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_EXT]
    else:
        names = None
        entries = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not entries:
        raise NeurFlowError(
            "data",
            "a folder with images (flat or one sub-folder per class)",
            str(path),
            f"no files with extensions {', '.join(sorted(IMAGE_EXT))}",
        )
    fn = imagenet_transform if transform == "imagenet" else plain_transform
    images, labels, files, skipped = [], [], [], 0
    for f, label in entries:
        try:
            with Image.open(f) as im:
                rgb = to_rgb(im)
                if min(rgb.size) < 8:
                    raise ValueError("image smaller than 8 px")
                images.append(fn(rgb))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped += 1
            log.warning("skipped %s: %s", f.name, exc)
            continue
        labels.append(label)
        files.append(str(f.relative_to(path)))
    if not images:
        raise NeurFlowError("data", "at least one readable image", str(path), f"all {skipped} files were unreadable")
    if len({tuple(x.shape) for x in images}) > 1:
        raise NeurFlowError(
            "transform",
            "images of one size, or the 'imagenet' transform",
            "none",
            "the images have different sizes; use {p:transform} imagenet",
        )
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, len(entries))
    lab = torch.tensor(labels) if names else None
    return Dataset(torch.stack(images), lab, names, files, skipped, str(path), transform=transform)
