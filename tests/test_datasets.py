import pytest
import torch
from PIL import Image

from neurflow.errors import NeurFlowError
from neurflow.sources.datasets import IMAGENET_MEAN, load_data


def write(path, mode, size=(40, 30), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L",) else (value,) * len(mode)).save(path)


def test_image_folder_converts_and_skips(tmp_path):
    write(tmp_path / "cat" / "a.png", "RGB")
    write(tmp_path / "cat" / "b.png", "L")  # grayscale -> RGB
    write(tmp_path / "dog" / "c.png", "RGBA")  # RGBA -> RGB
    write(tmp_path / "dog" / "tiny.png", "RGB", size=(4, 4))  # too small: skipped
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")  # undecodable: skipped
    ds = load_data(str(tmp_path))  # listed, not decoded: index -> file, unreadable ones included
    assert ds.files == ["cat/a.png", "cat/b.png", "dog/broken.jpg", "dog/c.png", "dog/tiny.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.class_names == ["cat", "dog"]
    assert ds.images.shape == (5, 3, 224, 224) and ds.n_skipped == 0
    x, kept = ds.images.take(range(5))  # decoded on demand: the unreadable ones are skipped and counted
    assert x.shape == (3, 3, 224, 224) and kept.tolist() == [0, 1, 3]
    assert ds.n_skipped == 2 and ds.images.unreadable == {2, 4}
    # imagenet preset: a flat grey 128 image normalises to (128/255 - mean) / std
    expected = (128 / 255 - IMAGENET_MEAN[0]) / 0.229
    assert abs(float(x[0, 0, 100, 100]) - expected) < 1e-4


def test_flat_folder_and_plain_transform(tmp_path):
    write(tmp_path / "x.png", "RGB", size=(32, 32), value=255)
    write(tmp_path / "y.png", "RGB", size=(32, 32), value=0)
    ds = load_data(str(tmp_path), "none")
    assert ds.labels is None and ds.images.shape == (2, 3, 32, 32)
    assert float(ds.images.decoded()[0].min()) == 1.0 and float(ds.images.decoded()[1].max()) == 0.0
    write(tmp_path / "z.png", "RGB", size=(20, 32))
    with pytest.raises(NeurFlowError, match="^transform"):  # met when decoded
        load_data(str(tmp_path), "none").images.decoded()


def test_pt_files(tmp_path):
    torch.save(torch.rand(4, 3, 8, 8), tmp_path / "t.pt")
    assert load_data(str(tmp_path / "t.pt")).images.shape == (4, 3, 8, 8)
    torch.save({"images": torch.rand(2, 1, 8, 8), "labels": [1, 0]}, tmp_path / "d.pt")
    ds = load_data(str(tmp_path / "d.pt"))
    assert ds.images.shape == (2, 3, 8, 8) and ds.labels.tolist() == [1, 0]
    torch.save(torch.rand(4, 8, 8), tmp_path / "bad.pt")
    with pytest.raises(NeurFlowError, match=r"\[N, 3, H, W\]"):
        load_data(str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty(tmp_path, make):
    path = tmp_path / "nothing" if make == "missing" else tmp_path
    with pytest.raises(NeurFlowError, match="^data"):
        load_data(str(path))
