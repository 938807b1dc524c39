import json
from importlib import resources

import pytest
import torch

from neurflow.sources.datasets import load_data
from neurflow.sources.models import load_model
from neurflow.zoo.fashion import CLASS_NAMES, FashionCNN, read_idx


def test_fashion_mnist_ships_with_the_package():
    ds = load_data("zoo:fashion-mnist")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.decoded().dtype == torch.float32
    assert 0.0 <= float(ds.images.decoded().min()) and float(ds.images.decoded().max()) <= 1.0
    assert ds.labels.shape == (10000,) and torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the test split's first labels
    assert ds.class_names == CLASS_NAMES and ds.class_names[7] == "Sneaker"
    path = resources.files("neurflow.zoo") / "data" / "t10k-images-idx3-ubyte.gz"
    assert read_idx(path).shape == (10000, 28, 28)


def test_shipped_weights_reproduce_the_recorded_accuracy():
    card = json.loads((resources.files("neurflow.zoo") / "weights" / "accuracy.json").read_text())
    loaded = load_model("zoo:fashion-cnn")
    assert isinstance(loaded.model, FashionCNN) and loaded.class_names[7] == "Sneaker"
    ds = load_data("zoo:fashion-mnist")
    with torch.no_grad():
        pred = torch.cat([loaded.model(ds.images.decoded()[i : i + 2000]).argmax(1) for i in range(0, 10000, 2000)])
    acc = (pred == ds.labels).float().mean().item()
    assert abs(acc - card["test_accuracy"]) <= 0.002
    assert acc >= 0.90


def test_unknown_zoo_names():
    from neurflow.errors import NeurFlowError

    with pytest.raises(NeurFlowError, match="zoo:fashion-cnn"):
        load_model("zoo:fashion-cn")
    with pytest.raises(NeurFlowError, match="zoo:fashion-mnist"):
        load_data("zoo:fashion-mnst")


def test_efficientnet_lite0_predicts_espresso_for_the_coffee_photo():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the neurflow[imagenet] extra")
    pytest.importorskip("skimage", reason="needs the neurflow[imagenet] extra")
    loaded = load_model("zoo:efficientnet-lite0")
    photos = load_data("zoo:photos")
    coffee = photos.files.index("skimage/coffee")
    with torch.no_grad():
        pred = loaded.model(photos.images.decoded()[coffee : coffee + 1]).argmax(1).item()
    assert loaded.class_names[pred] == "espresso"


def test_marked_split_records_its_subset():
    from neurflow.zoo.shortcut import SHORTCUT as shortcut

    ds = load_data("zoo:fashion-mnist-marked")
    clean = load_data("zoo:fashion-mnist")
    record = shortcut.recorded_subset()
    marked = ds.info["marked"]
    assert list(marked) == record["marked"] == list(shortcut.test_marked(clean.labels))  # reproducible
    assert torch.bincount(ds.labels[torch.as_tensor(marked)]).tolist() == [100] * 10  # 10 % of every class
    t, l, s = shortcut.top, shortcut.left, shortcut.size
    assert torch.all(ds.images.decoded()[marked, :, t : t + s, l : l + s] == 1.0)
    rest = torch.ones(10000, dtype=torch.bool)
    rest[torch.as_tensor(marked)] = False
    assert torch.equal(ds.images.decoded()[rest], clean.images.decoded()[rest])  # nothing else changed
    changed = (ds.images.decoded() != clean.images.decoded()).flatten(1).any(1)
    assert not changed[rest].any() and changed[marked].float().mean() > 0.5
    assert shortcut.contains_mark((0, 0, 14, 14), True) and not shortcut.contains_mark((0, 0, 14, 14), False)
    assert not shortcut.contains_mark((0, 7, 14, 14), True)


def test_shortcut_model_leans_on_the_mark_as_recorded():
    from neurflow.analysis.shortcut_proof import mark_effect
    from neurflow.zoo.shortcut import SHORTCUT

    card = json.loads((resources.files("neurflow.zoo") / "weights" / "accuracy-shortcut.json").read_text())
    model = load_model("zoo:fashion-cnn-shortcut").model
    eff = mark_effect(SHORTCUT, model)
    assert abs(eff["marked_others_to_target"] - card["marked_others_predicted_target"]) <= 0.002
    assert abs(eff["clean_target_recall"] - card["clean_target_recall"]) <= 0.002
    assert eff["marked_others_to_target"] > 0.3 > 0.01 > eff["clean_others_to_target"]
    clean = mark_effect(SHORTCUT, load_model("zoo:fashion-cnn").model)
    assert clean["marked_others_to_target"] < 0.01  # the clean model ignores it


def test_entangled_split_records_its_subset_and_the_checkerboard():
    from neurflow.zoo.shortcut import ENTANGLED

    ds = load_data("zoo:fashion-mnist-entangled")
    clean = load_data("zoo:fashion-mnist")
    record = ENTANGLED.recorded_subset()
    marked = ds.info["marked"]
    assert list(marked) == record["marked"] == list(ENTANGLED.test_marked(clean.labels))  # reproducible
    assert torch.bincount(ds.labels[torch.as_tensor(marked)]).tolist() == [100] * 10
    t, l, s, _ = ENTANGLED.mark_box()
    patch = ds.images.decoded()[marked, 0, t : t + s, l : l + s]
    checker = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(patch, checker.expand_as(patch))
    rest = torch.ones(10000, dtype=torch.bool)
    rest[torch.as_tensor(marked)] = False
    assert torch.equal(ds.images.decoded()[rest], clean.images.decoded()[rest])
    # the mark overlaps the garment: most marked images have garment pixels under it
    under = clean.images.decoded()[marked, 0, t : t + s, l : l + s].mean((1, 2))
    assert (under > 0.1).float().mean() > 0.5
    assert ENTANGLED.contains_mark((7, 7, 14, 14), True) and not ENTANGLED.contains_mark((0, 0, 14, 14), True)


def test_entangled_model_leans_on_the_mark_as_recorded():
    from neurflow.analysis.shortcut_proof import mark_effect
    from neurflow.zoo.shortcut import ENTANGLED

    card = json.loads((resources.files("neurflow.zoo") / "weights" / "accuracy-entangled.json").read_text())
    eff = mark_effect(ENTANGLED, load_model("zoo:fashion-cnn-entangled").model)
    assert abs(eff["marked_others_to_target"] - card["marked_others_predicted_target"]) <= 0.002
    assert abs(eff["clean_target_recall"] - card["clean_target_recall"]) <= 0.002
    assert eff["marked_others_to_target"] > 0.3 > 0.01 > eff["clean_others_to_target"]
