import dataclasses
import json

import numpy as np
import pytest
import torch

import neurflow
from neurflow.errors import NeurFlowError
from neurflow.method import core_neurons as core

from conftest import SKIP_LAYERS, assert_same_state, majority_class, model_state

SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), batch_size=16)


def fit(model, images, out=None, **kw):
    return neurflow.NeurFlow(**{**SETTINGS, **kw}).fit(
        model, images, target=majority_class(model, images), layers=SKIP_LAYERS, out=out
    )


def strip(doc):
    doc = json.loads(json.dumps(doc))
    doc["meta"].pop("timings_s", None)
    for layer in doc["layers"]:
        layer.pop("seconds")
    return doc


def test_estimator_contract_and_frozen_results(skipnet, tiny_images):
    nf = neurflow.NeurFlow(**SETTINGS)
    assert not hasattr(nf, "circuit_") and nf.config.tau == 3
    target = majority_class(skipnet, tiny_images)
    assert nf.fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS) is nf  # fit returns the estimator
    c = nf.circuit_  # with its result on it
    assert c.target == target
    assert [l.name for l in c.layers] == SKIP_LAYERS[:-1] and c.input_layer == "block1"
    assert [l.lower for l in c.layers] == SKIP_LAYERS[1:]
    assert list(c.layers[0].nodes) == [target]
    # tau = 3 distinct core neurons per node: one class node, then 3 nodes, then between 3 and 3 * 3
    assert len(c.layers[1].nodes) == 3 and 3 <= len(c.layers[2].nodes) <= 9
    # nodes of each layer = union of the core sets above
    for upper, lower in zip(c.layers, c.layers[1:]):
        assert set(lower.nodes) == {j for n in upper.nodes.values() for j in n.core}
    for layer in c.layers:
        assert layer.groups, layer.name
        for node in layer.nodes.values():
            assert len(node.core) == 3 and len(node.exemplars) == 6
            assert sum(len(s.exemplars) for s in node.sub_concepts) == 6
            for s in node.sub_concepts:
                assert abs(sum(abs(w) for w in s.weights.values()) - 1) < 1e-9  # L1
                assert set(s.display_exemplars) <= set(s.exemplars) and len(s.display_exemplars) <= 5
                assert s.group is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.target = 3


def test_user_model_unchanged(skipnet, tiny_images):
    skipnet.train()
    skipnet.stem[0].bias.requires_grad_(False)
    before = model_state(skipnet)
    target = majority_class(skipnet.eval(), tiny_images)
    skipnet.train()
    rng = torch.get_rng_state()
    neurflow.NeurFlow(**SETTINGS).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS)
    assert_same_state(before, model_state(skipnet))
    assert torch.equal(rng, torch.get_rng_state())  # the caller's random generator is untouched
    with pytest.raises(NeurFlowError):  # failing midway leaves it as well
        neurflow.NeurFlow(**{**SETTINGS, "top_k": 10_000}).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS)
    assert_same_state(before, model_state(skipnet))


def test_deterministic_and_order_invariant(skipnet, tiny_images, tmp_path):
    a = fit(skipnet, tiny_images, tmp_path / "a")
    fit(skipnet, tiny_images, tmp_path / "b")
    ja = json.loads((tmp_path / "a" / "circuit.json").read_text())
    jb = json.loads((tmp_path / "b" / "circuit.json").read_text())
    assert strip(ja) == strip(jb)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    c = fit(skipnet, tiny_images[perm]).circuit_
    for la, lc in zip(a.circuit_.layers, c.layers):
        assert {n: node.core for n, node in la.nodes.items()} == {n: node.core for n, node in lc.nodes.items()}


def test_save_load_roundtrip(skipnet, tiny_images, tmp_path):
    c = fit(skipnet, tiny_images, tmp_path).circuit_
    loaded = neurflow.load(tmp_path)
    assert loaded.target == c.target and loaded.trace == c.trace
    for la, lb in zip(c.layers, loaded.layers):
        assert la.name == lb.name and la.groups == lb.groups
        assert dict(la.nodes) == dict(lb.nodes)
        assert {k: dict(v) for k, v in la.group_edges.items()} == {k: dict(v) for k, v in lb.group_edges.items()}
    np.testing.assert_array_equal(loaded.arrays["crop_box"], c.arrays["crop_box"])
    shown = {d for l in loaded.layers for n in l.nodes.values() for s in n.sub_concepts for d in s.display_exemplars}
    assert {int(p.stem) for p in (tmp_path / "crops").glob("*.png")} == shown
    v = loaded.concept_vector(c.layers[1].name, *next(iter(loaded.layers[1].groups[0].members)))
    assert v.shape == (8,)


def test_resume_skips_finished_layers(skipnet, tiny_images, tmp_path, monkeypatch):
    fit(skipnet, tiny_images, tmp_path / "full")
    calls = []
    real = core.attribute

    def dying(graph, pool, upper, *a, **k):
        calls.append(upper)
        if upper == "block3":
            raise KeyboardInterrupt  # killed inside the second layer
        return real(graph, pool, upper, *a, **k)

    monkeypatch.setattr("neurflow.method.layer_pass.attribute", dying)
    with pytest.raises(KeyboardInterrupt):
        fit(skipnet, tiny_images, tmp_path / "r")
    with pytest.raises(NeurFlowError, match="partial"):
        neurflow.load(tmp_path / "r")
    calls.clear()
    monkeypatch.setattr("neurflow.method.layer_pass.attribute", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    fit(skipnet, tiny_images, tmp_path / "r")
    assert calls == ["block3", "block2"]  # "head" was not recomputed
    a = json.loads((tmp_path / "full" / "circuit.json").read_text())
    b = json.loads((tmp_path / "r" / "circuit.json").read_text())
    assert strip(a) == strip(b)


def test_refuses_a_different_run_unless_overwrite(skipnet, tiny_images, tmp_path):
    fit(skipnet, tiny_images, tmp_path)
    with pytest.raises(NeurFlowError, match="different run"):
        fit(skipnet, tiny_images, tmp_path, tau=2)
    nf = neurflow.NeurFlow(**{**SETTINGS, "tau": 2})
    nf.fit(
        skipnet,
        tiny_images,
        target=majority_class(skipnet, tiny_images),
        layers=SKIP_LAYERS,
        out=tmp_path,
        overwrite=True,
    )
    assert all(len(n.core) == 2 for n in neurflow.load(tmp_path).layers[0].nodes.values())


def test_newer_schema_refused(skipnet, tiny_images, tmp_path):
    fit(skipnet, tiny_images, tmp_path)
    doc = json.loads((tmp_path / "circuit.json").read_text())
    doc["schema_version"] = 99
    (tmp_path / "circuit.json").write_text(json.dumps(doc))
    with pytest.raises(NeurFlowError, match="newer neurflow"):
        neurflow.load(tmp_path)


def test_labelled_selection_and_bad_targets(skipnet, tiny_images):
    labels = torch.tensor([0, 1, 1, 2, 1, 0])
    nf = neurflow.NeurFlow(**{**SETTINGS, "selection": "labelled", "top_k": 4})
    nf.fit(skipnet, tiny_images, target=1, layers=SKIP_LAYERS, labels=labels)
    assert nf.circuit_.meta["n_class_images"] == 3
    with pytest.raises(NeurFlowError, match="0..4"):
        neurflow.NeurFlow(**SETTINGS).fit(skipnet, tiny_images, target=7, layers=SKIP_LAYERS)
    with pytest.raises(NeurFlowError, match="did you mean"):
        neurflow.NeurFlow(**SETTINGS).fit(
            skipnet, tiny_images, target="cta", layers=SKIP_LAYERS, class_names=["cat", "dog", "a", "b", "c"]
        )


def test_adaptive_tau_keeps_a_prefix_of_the_ranking(skipnet, tiny_images):
    fixed = fit(skipnet, tiny_images, tau=6).circuit_
    adaptive = fit(skipnet, tiny_images, tau=6, adaptive_eps=0.05).circuit_
    node = adaptive.layers[0].nodes[adaptive.target]
    full = fixed.layers[0].nodes[fixed.target]
    assert 1 <= len(node.core) <= 6 and list(node.core) == list(full.core[: len(node.core)])


def test_finished_run_is_loaded_not_recomputed(skipnet, tiny_images, tmp_path, monkeypatch):
    first = fit(skipnet, tiny_images, tmp_path).circuit_
    assert not (tmp_path / "partial").exists()
    assert oct((tmp_path / "circuit.json").stat().st_mode & 0o044) == oct(0o044)  # readable by others
    monkeypatch.setattr("neurflow.method.layer_pass.attribute", lambda *a, **k: pytest.fail("recomputed"))
    again = fit(skipnet, tiny_images, tmp_path).circuit_
    assert again.trace == first.trace and again.meta["timings_s"] == first.meta["timings_s"]


def test_overwrite_never_deletes_foreign_files(skipnet, tiny_images, tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(NeurFlowError, match="no neurflow manifest"):
        neurflow.NeurFlow(**SETTINGS).fit(
            skipnet,
            tiny_images,
            target=majority_class(skipnet, tiny_images),
            layers=SKIP_LAYERS,
            out=tmp_path,
            overwrite=True,
        )
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_thumbnails_show_the_crops_as_the_model_saw_them():
    from io import BytesIO

    from PIL import Image

    from neurflow.method.crops import CropPool
    from neurflow.store import thumbnails

    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, :4, :4] = 1.0  # a white top-left quarter on black, already in [0, 1]
    pool = CropPool(x, (1.0, 0.5))
    png = thumbnails(pool, [0, 1])
    full = np.asarray(Image.open(BytesIO(png[0])))
    assert full.shape == (8, 8, 3) and full[0, 0].tolist() == [255] * 3 and full[7, 7].tolist() == [0] * 3
    assert np.asarray(Image.open(BytesIO(png[1]))).min() == 255  # crop 1: the top-left 4x4 window
