"""Provenance: typed, round-trips through circuit.json's ``meta``, and reads runs written by 0.1."""

import pytest

from neurflow.provenance import Provenance


def test_round_trip_keeps_every_field_and_unknown_keys():
    p = Provenance(model_spec="zoo:fashion-cnn", weights="w.pt", data_spec="imgs/", transform="imagenet",
                   data_skipped=2, files=("a.png", "b.png"), demo=None, note="n", model_class="FashionCNN",
                   data_shape=(4, 1, 28, 28), neurflow="0.1.0", torch="2", target_name="Bag",
                   class_names=("a", "Bag"), n_images=4, n_class_images=2, n_crops=28, image_size=28,
                   image_channels=1, run_hash="r", model_hash="m", crop_sizes={"28": 2},
                   timings_s={"total_s": 1.0}, extra={"mine": [1, 2]})  # fmt: skip
    meta = p.to_meta()
    assert meta["model"] == "zoo:fashion-cnn" and meta["data"] == "imgs/" and meta["mine"] == [1, 2]
    assert Provenance.from_meta(meta) == p


def test_python_runs_show_class_and_shape():
    p = Provenance(model_class="Net", data_shape=(8, 3, 16, 16))
    assert p.to_meta()["model"] == "Net" and p.to_meta()["data"] == "tensor [8, 3, 16, 16]"
    back = Provenance.from_meta(p.to_meta())
    assert back.model_spec is None and back.data_spec is None


@pytest.mark.parametrize(
    "meta,spec,data,transform,model_class",
    [
        # 0.1 CLI run (image folder, default transform) and demo run
        ({"model": "torchvision:resnet18", "weights": None, "data": "{folder}", "transform": None},
         "torchvision:resnet18", "{folder}", "imagenet", ""),
        ({"model": "zoo:fashion-cnn", "data": "zoo:fashion-mnist", "demo": "fashion-cnn"},
         "zoo:fashion-cnn", "zoo:fashion-mnist", None, ""),
        # 0.1 Python runs: a class name and a tensor, or specs passed as meta
        ({"model": "SkipNet", "data": "tensor [12, 3, 16, 16]"}, None, None, None, "SkipNet"),
        ({"model": "zoo:fashion-cnn-shortcut", "data": "zoo:fashion-mnist-marked"},
         "zoo:fashion-cnn-shortcut", "zoo:fashion-mnist-marked", None, ""),
    ],
)  # fmt: skip
def test_legacy_meta(tmp_path, meta, spec, data, transform, model_class):
    meta = {k: (v.format(folder=tmp_path) if isinstance(v, str) else v) for k, v in meta.items()}
    p = Provenance.from_meta(meta)
    want_data = data.format(folder=tmp_path) if data else None
    assert (p.model_spec, p.data_spec, p.transform, p.model_class) == (spec, want_data, transform, model_class)
    if model_class:
        assert p.model == "SkipNet" and p.data_shape == (12, 3, 16, 16)
