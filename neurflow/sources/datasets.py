"""Read a DATA spec, through a registry of schemes:

* ``SCHEME:NAME`` - a registered scheme (``register_data_scheme``; plugins register theirs, see
  ``neurflow.schemes``);
* otherwise a path: an image folder (ImageFolder layout or flat) or a ``.pt`` file holding an
  image tensor [N, C, H, W] or a dict with ``images`` and ``labels``.

``channels`` (the model's input channels, ``models.input_channels``) says what the images become:
image files are read as greyscale (PIL ``L``) or RGB, tensors with another channel count are
repeated (1 -> 3), averaged (3 -> 1) or lose their alpha channel (4 -> 3), each with one info line;
other counts are a one-line error.  Without it, images come with 3 channels (greyscale repeated,
alpha dropped)."""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import NeurFlowError
from ..options import TRANSFORMS
from . import hf_data
from .schemes import DATA_SCHEMES
from .shards import ShardImages, decode_bytes, index_shards, shard_paths
from .stream import FolderImages, ImageSource, TensorImages, Unreadable

log = logging.getLogger(__name__)
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIL_MODES = {1: "L", 3: "RGB"}  # the channel counts image files are read into
SHARDS = "wds:"  # WebDataset tar shards (sources/shards.py)
HF = "hf:"  # a Hugging Face datasets dataset (sources/hf_data.py)


@dataclass
class Dataset:
    """A DATA spec read: ``images`` a source (``stream.ImageSource``: listed, decoded on demand; a
    tensor given here is wrapped in one), ``labels`` one per image or None, ``files`` the relative
    paths of a folder's images (index -> file)."""

    images: ImageSource
    labels: torch.Tensor | None = None
    class_names: list | None = None
    files: list | None = None
    skipped: int = 0  # images skipped before the source was made (a scheme's own count)
    spec: str = ""
    info: dict = field(default_factory=dict)  # extras a data source records (e.g. a marked subset)
    transform: str | None = None  # the preset the images were prepared with (None: as stored)

    def __post_init__(self):
        if isinstance(self.images, torch.Tensor):
            self.images = TensorImages(self.images, self.labels)

    @property
    def n_skipped(self) -> int:
        """Unreadable images skipped so far (by the scheme, and met while decoding)."""
        return self.skipped + len(self.images.unreadable)


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
    x = plain_transform(img)
    mean, std = imagenet_stats(x.shape[0])
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def imagenet_stats(channels: int) -> tuple[tuple, tuple]:
    """(mean, std) of the ImageNet preset: per RGB channel, or their averages (0.449, 0.226) for
    a greyscale image."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def to_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """``img`` as 8-bit RGB, or greyscale (``L``) for ``channels`` 1.  16-bit greyscale (PNG,
    TIFF: modes ``I;16*`` and ``I``) is scaled by its bit depth (``convert`` would clip it at 255:
    nearly white); 16-bit RGB is read as 8-bit by PIL already."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float64)
        depth = 65535.0 if img.mode != "I" or a.max(initial=0) <= 65535 else float(2**32 - 1)
        img = Image.fromarray(np.clip(np.round(a / depth * 255), 0, 255).astype(np.uint8), "L")
    return img.convert(PIL_MODES[channels])


def plain_transform(img: Image.Image) -> torch.Tensor:
    """An 8-bit ``L`` or ``RGB`` image as a float tensor [C, H, W] in [0, 1]."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def fit_channels(images: torch.Tensor, channels: int | None, where: str) -> torch.Tensor:
    """Tensor images [N, C, H, W] with ``channels`` channels (None, a model that does not say: 3
    from 1 or 4, other counts as stored), converted with one info line; a count that does not
    convert is one line."""
    have = int(images.shape[1])
    want = channels if channels is not None else (3 if have in (1, 4) else have)
    if have == want:
        return images
    if have == 4 and want in (1, 3):
        log.info("data: the 4th (alpha) channel of the images in %s dropped", where)
        images, have = images[:, :3], 3
    if have == want:
        return images
    if (have, want) == (1, 3):
        log.info("data: the 1-channel images in %s repeated to the model's 3 channels", where)
        return images.repeat(1, 3, 1, 1)
    if (have, want) == (3, 1):
        log.info("data: the 3-channel images in %s averaged to the model's 1 channel", where)
        return images.mean(1, keepdim=True)
    raise NeurFlowError(
        "data",
        f"images with {want} channel(s), as the model's first layer takes",
        f"{have} channels",
        f"{where}: only 1 <-> 3 channels (and dropping an alpha channel) are converted",
    )


def _values(t, what: str, where: str):
    """``t`` (images or labels of a tensor file or a scheme) as a dense tensor with values: a
    sparse one made dense (one info line), a meta one (shapes without values) refused."""
    if not isinstance(t, torch.Tensor):
        return t
    if t.is_meta:
        raise NeurFlowError(
            "data", f"{what} with values", "a tensor on the meta device", f"{where}: it holds shapes, no values"
        )
    if t.layout != torch.strided:
        log.info("data: the sparse %s tensor in %s made dense", what, where)
        t = t.to_dense()
    if t.is_complex():
        raise NeurFlowError("data", f"real {what}", f"a {str(t.dtype).removeprefix('torch.')} tensor", where)
    return t


# the registry and its functions live in schemes.py (no torch there: `neurflow --help` reads it)
_SCHEMES = DATA_SCHEMES


def load_data(spec: str, transform: str | None = None, channels: int | None = None,
              image_column: str | None = None, label_column: str | None = None) -> Dataset:  # fmt: skip
    """``transform`` ("imagenet" or "none") applies to image folders, tar shards and ``hf:``
    datasets; a scheme's data comes prepared by the scheme (and is given ``channels``, when they
    are given, as tensor files are).  ``image_column``/``label_column``: an ``hf:`` dataset's
    columns (default: detected)."""
    if transform is not None and transform not in TRANSFORMS:
        raise NeurFlowError("transform", " or ".join(TRANSFORMS), transform)
    if not isinstance(spec, str) or not spec:
        raise NeurFlowError("data", "a data spec (an image folder, a .pt file or SCHEME:NAME)", spec)
    if spec.startswith(HF):  # built in, like folders: the transform and channels apply
        return _from_hf(spec[len(HF) :], transform or "imagenet", channels, image_column, label_column)
    if spec.startswith(SHARDS):  # built in, like folders: the transform and channels apply
        return _from_shards(spec[len(SHARDS) :], transform or "imagenet", channels)
    found = _SCHEMES.lookup(spec)
    if found is not None:
        loader, rest = found
        data = loader(rest)
        if not isinstance(data, Dataset):
            raise NeurFlowError("data", "a scheme loader returning a Dataset", spec, type(data).__name__)
        if not isinstance(data.images, TensorImages):  # a scheme's own source: as it made it
            return data
        images = _values(data.images.tensor, "images", spec)
        if channels is not None:  # a scheme's images are as it made them unless a model says otherwise
            images = fit_channels(images, channels, spec)
        labels = _values(data.labels, "labels", spec)
        if images is data.images.tensor and labels is data.labels:
            return data
        return replace(data, images=TensorImages(images, labels), labels=labels)
    path = Path(spec)
    if not path.exists():
        schemes = _SCHEMES.names()
        hint = "no such file or directory"
        if ":" in spec and schemes:
            hint += f"; the schemes are {', '.join(s + ':' for s in schemes)}"
        raise NeurFlowError("data", "an image folder or a .pt file", spec, hint)
    if path.is_file():
        return _from_pt(path, channels)
    return _from_folder(path, transform or "imagenet", channels)


def _from_pt(path: Path, channels: int | None = None) -> Dataset:
    try:
        with warnings.catch_warnings():  # a sparse tensor is checked, then made dense with one info line
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants")
            obj = _load_pt(path)
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
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise NeurFlowError("data", "an image tensor [N, 3, H, W]", getattr(images, "shape", type(images)))
    images = _values(images, "images", path.name)
    if images.shape[0] == 0:
        raise NeurFlowError("data", "at least one image", "an empty tensor")
    if images.dtype == torch.uint8:  # pixel values 0..255: scaled as --transform none scales image files
        log.info("data: uint8 images in %s scaled to [0, 1] (divided by 255)", path.name)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    images = fit_channels(images, channels, path.name)
    if labels is not None:
        labels = torch.as_tensor(_values(labels, "labels", path.name)).long()
        if labels.shape != (images.shape[0],):
            raise NeurFlowError(
                "data",
                f"one label per image ({images.shape[0]} images)",
                f"labels of shape {list(labels.shape)}",
                f"{path.name}: 'labels' must be a 1-D tensor as long as 'images'",
            )
    return Dataset(TensorImages(images, labels), labels, list(names) if names else None, spec=str(path))


def _load_pt(path: Path):
    """``torch.load`` memory-mapped where the file allows it (the zip format torch.save writes):
    the pages are read as the images are, not all up front."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def decode_file(f: Path, fn, channels: int) -> torch.Tensor:
    """One image file read into ``channels`` and prepared by ``fn``; ``Unreadable`` when PIL
    cannot read it (or it is smaller than 8 px)."""
    try:
        with Image.open(f) as im:
            img = to_mode(im, channels)
            if min(img.size) < 8:
                raise ValueError("image smaller than 8 px")
            return fn(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise Unreadable(str(exc)) from None


def list_images(path: Path) -> tuple[list[str], list | None, list | None]:
    """(relative paths, labels or None, class names or None) of the image files under ``path``:
    one sub-folder per class (recursive inside each), else the files of ``path`` itself."""
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files, labels = [], []
        for index, d in enumerate(subdirs):
            found = [f for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_EXT and f.is_file()]
            files += [str(f.relative_to(path)) for f in found]
            labels += [index] * len(found)
        return files, labels, [d.name for d in subdirs]
    found = [f for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_EXT and f.is_file()]
    return [str(f.relative_to(path)) for f in found], None, None


def _from_folder(path: Path, transform: str, channels: int | None = None) -> Dataset:
    """The folder *listed*: its images are decoded when the run asks for them (``FolderImages``)."""
    files, labels, names = list_images(path)
    if not files:
        raise NeurFlowError(
            "data",
            "a folder with images (flat or one sub-folder per class)",
            str(path),
            f"no files with extensions {', '.join(sorted(IMAGE_EXT))}",
        )
    fn = imagenet_transform if transform == "imagenet" else plain_transform
    channels = _folder_channels(channels, path, transform)
    decode = functools.partial(decode_file, fn=fn, channels=channels)
    lab = torch.tensor(labels) if names else None
    source = FolderImages(path, files, lab, decode, f"{transform}|{channels}")
    source.image_shape  # noqa: B018 - the first readable image: an all-unreadable folder is one line now
    return Dataset(source, lab, names, files, 0, str(path), transform=transform)


def _from_hf(name: str, transform: str, channels, image_column, label_column) -> Dataset:
    """A Hugging Face dataset (``hf_data``), its images decoded when the run asks."""
    ds, split = hf_data.open_split(name)
    image_column, label_column = hf_data.columns(ds, image_column, label_column)
    fn = imagenet_transform if transform == "imagenet" else plain_transform
    channels = _folder_channels(channels, Path(name), transform)
    prepare = functools.partial(_prepared, fn=fn, channels=channels)
    lab = torch.as_tensor(ds[label_column]).long() if label_column else None
    source = hf_data.HFImages(ds, image_column, lab, prepare, f"{transform}|{channels}", split)
    source.image_shape  # noqa: B018 - the first readable image: all unreadable is one line now
    names = hf_data.class_names(ds, label_column)
    info = {"image_column": image_column, "label_column": label_column, "split": split}
    return Dataset(source, lab, names, None, 0, f"{HF}{name}", info=info, transform=transform)


def _prepared(img, fn, channels: int) -> torch.Tensor:
    img = to_mode(img, channels)
    if min(img.size) < 8:
        raise Unreadable("image smaller than 8 px")
    return fn(img)


def _from_shards(pattern: str, transform: str, channels: int | None = None) -> Dataset:
    """WebDataset tar shards, indexed (``shards``): their images decoded when the run asks."""
    paths = shard_paths(pattern)
    samples, labels, skipped = index_shards(paths, IMAGE_EXT)
    if not samples:
        raise NeurFlowError(
            "data", "tar shards with image members", f"{SHARDS}{pattern}", f"extensions {', '.join(sorted(IMAGE_EXT))}"
        )
    fn = imagenet_transform if transform == "imagenet" else plain_transform
    channels = _folder_channels(channels, paths[0], transform)
    decode = functools.partial(decode_bytes, fn=fn, channels=channels, to_mode=to_mode)
    lab = torch.tensor(labels) if all(v is not None for v in labels) else None
    source = ShardImages(paths, samples, lab, decode, f"{transform}|{channels}")
    source.image_shape  # noqa: B018 - the first readable image: all unreadable is one line now
    files = [source.name_of(i) for i in range(len(source))]
    return Dataset(source, lab, None, files, skipped, f"{SHARDS}{pattern}", transform=transform)


def _folder_channels(channels: int | None, path: Path, transform: str) -> int:
    """The channels image files are read into for a model taking ``channels`` (None: RGB)."""
    if channels is None or channels == 3:
        return 3
    if channels not in PIL_MODES:
        raise NeurFlowError(
            "data",
            f"images with {channels} channels, as the model's first layer takes",
            str(path),
            "image files are read as greyscale (1 channel) or RGB (3); give a .pt tensor [N, C, H, W]",
        )
    mean, std = imagenet_stats(channels)
    normalised = f", normalised with the ImageNet statistics averaged over RGB ({mean[0]:.3f}, {std[0]:.3f})"
    log.info(
        "data: the images in %s read as greyscale (PIL 'L') for the model's 1 input channel%s",
        path.name,
        normalised if transform == "imagenet" else "",
    )
    return channels
