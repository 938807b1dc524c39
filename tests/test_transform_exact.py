"""The ``imagenet`` transform equals torchvision's Resize(256) + CenterCrop(224) + ToTensor +
Normalize(ImageNet mean/std) to the pixel, on images of odd sizes (issue 15, item 6)."""

import numpy as np
import pytest
import torch
from PIL import Image

from neurflow.sources.datasets import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform

from conftest import import_oracle

T = import_oracle("torchvision.transforms")

SIZES = [
    (257, 300),
    (300, 257),
    (511, 383),
    (383, 511),
    (224, 224),
    (256, 256),
    (225, 1000),
    (1000, 225),
    (333, 333),
    (255, 256),
    (256, 255),
    (100, 150),
    (150, 100),
    (31, 97),
    (640, 480),
    (500, 375),
    (227, 341),
    (1023, 769),
]


def _reference():
    return T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@pytest.mark.parametrize("w,h", SIZES)
def test_imagenet_transform_equals_torchvision(w, h):
    rng = np.random.default_rng(w * 10007 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    ours, ref = imagenet_transform(img), _reference()(img)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert ours.dtype == ref.dtype == torch.float32
    assert torch.equal(ours, ref), f"{w}x{h}: max |diff| {(ours - ref).abs().max().item()}"


def test_smooth_image_equal_too():
    """A smooth gradient (where an off-by-one crop would still differ by a step)."""
    w, h = 511, 383
    a = np.stack(np.meshgrid(np.arange(w) % 256, np.arange(h) % 256), -1)
    img = Image.fromarray(np.concatenate([a, a[..., :1]], -1).astype(np.uint8), "RGB")
    assert torch.equal(imagenet_transform(img), _reference()(img))
