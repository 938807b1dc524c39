"""Fashion-MNIST (MIT, Zalando) and ``FashionCNN``, the embedded default model.

The test split ships inside the package (``neurflow/zoo/data``); the training split is read only
by ``scripts/train_zoo.py``, from Debian's ``dataset-fashion-mnist`` or a given directory.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import NeurFlowError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # training-split pixel statistics (images in [0, 1])
WEIGHTS = "fashion-cnn.pt"


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise NeurFlowError("IDX file", "an unsigned-byte IDX file", str(path))
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str = "test", directory: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 28, 28] in [0, 1] and labels [N]. ``test`` defaults to the shipped copy."""
    prefix = "t10k" if split == "test" else "train"
    if directory is None and split == "test":
        base = resources.files("neurflow.zoo") / "data"
    else:
        base = Path(directory or DEBIAN_DIR)
    img, lab = base / f"{prefix}-images-idx3-ubyte.gz", base / f"{prefix}-labels-idx1-ubyte.gz"
    if not Path(str(img)).exists():
        raise NeurFlowError(
            "fashion-mnist directory",
            f"{prefix}-images-idx3-ubyte.gz in a folder",
            str(base),
            "install Debian's dataset-fashion-mnist or pass the folder of the IDX files",
        )
    images = torch.from_numpy(read_idx(img).copy()).float().div_(255).unsqueeze(1)
    labels = torch.from_numpy(read_idx(lab).astype(np.int64))
    return images, labels


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [
        ("conv", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(c_out)),
        ("relu", nn.ReLU()),
    ]
    if pool:
        layers.append(("pool", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(layers))


class FashionCNN(nn.Module):
    """Four convolution blocks (32, 64, 128, 128 channels; 28 -> 14 -> 7 px) and a linear head.
    Takes [B, 1, 28, 28] images in [0, 1]; normalises inside ``forward``."""

    class_names = CLASS_NAMES
    default_layers = ["head", "block4", "block3", "block2"]

    def __init__(self):
        super().__init__()
        self.block1 = _block(1, 32, pool=True)
        self.block2 = _block(32, 64, pool=True)
        self.block3 = _block(64, 128, pool=False)
        self.block4 = _block(128, 128, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, len(CLASS_NAMES))

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def fashion_cnn(weights: str | None = WEIGHTS) -> FashionCNN:
    """The model with the shipped weights (``weights=None``: random initialisation)."""
    model = FashionCNN()
    if weights:
        path = resources.files("neurflow.zoo") / "weights" / weights
        with resources.as_file(path) as p:
            if not Path(p).exists():
                raise NeurFlowError(
                    "model", "shipped zoo weights", str(p), "train them with `python scripts/train_zoo.py`"
                )
            model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    return model.eval()
