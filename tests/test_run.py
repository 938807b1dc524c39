import numpy as np
import pytest
import torch
from PIL import Image

from neurflow.analysis.images import image_from_data, read_image
from neurflow.circuit import Circuit
from neurflow.errors import NeurFlowError
from neurflow.sources.datasets import load_data


def circuit_with(meta) -> Circuit:
    return Circuit(target=0, layers=(), input_layer="x", meta=meta)


def test_a_png_of_a_zoo_image_reads_back_exactly(tmp_path):
    ds = load_data("zoo:fashion-mnist")
    x = ds.images.decoded()[161]
    Image.fromarray((x[0] * 255).round().byte().numpy(), mode="L").save(tmp_path / "pullover.png")
    c = circuit_with({"data": "zoo:fashion-mnist", "image_size": 28, "image_channels": 1})
    got = read_image(str(tmp_path / "pullover.png"), c)
    assert got.shape == (1, 28, 28) and torch.equal(got, x)
    assert torch.equal(image_from_data("161", ds), x)


def test_rgb_runs_resize_and_keep_three_channels(tmp_path):
    Image.fromarray(np.full((40, 40, 3), 255, dtype=np.uint8)).save(tmp_path / "white.jpg")
    got = read_image(str(tmp_path / "white.jpg"), circuit_with({"image_size": 16, "image_channels": 3}))
    assert got.shape == (3, 16, 16) and torch.allclose(got, torch.ones_like(got))
    imagenet = read_image(str(tmp_path / "white.jpg"), circuit_with({"image_size": 224, "transform": "imagenet"}))
    assert imagenet.shape == (3, 224, 224) and float(imagenet[0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


def test_bad_images(tmp_path):
    c = circuit_with({"image_size": 16, "image_channels": 3})
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(NeurFlowError, match="no such file"):
        read_image(str(tmp_path / "none.png"), c)
    with pytest.raises(NeurFlowError, match="an image file"):
        read_image(str(tmp_path / "notes.txt"), c)
    with pytest.raises(NeurFlowError, match="readable image"):
        read_image(str(tmp_path / "broken.png"), c)
    with pytest.raises(NeurFlowError, match="0..9999"):
        image_from_data("10000", load_data("zoo:fashion-mnist"))
