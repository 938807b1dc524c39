"""Number-for-number agreement with the published code on tests/fixtures/parity/resnet18-64px-extra.json:
the adaptive rule's core sets and the image-debugging scores (5 representatives and all members)."""

import itertools
import json
import random

import numpy as np
import pytest
import torch
import torchvision

import neurflow
from neurflow.analysis.debug import crop_scores, debug_image
from neurflow.method.crops import CropPool
from neurflow.method.probe import pool_responses
from neurflow.slicing import LayerGraph

from conftest import PARITY, golden_settings


def close(a, b):
    # 1e-4 relative; the golden values are rounded to 5 decimals, so allow half a unit of that
    return abs(a - b) <= 1e-4 * abs(b) + 0.5e-5


@pytest.fixture(scope="module")
def goldens():
    base = json.loads((PARITY / "resnet18-64px.json").read_text())  # a missing fixture fails, never skips
    extra = json.loads((PARITY / "resnet18-64px-extra.json").read_text())
    return base, extra


@pytest.fixture(scope="module")
def setup(goldens):
    """The seeded model and data of the parity README, checked against the recorded sums."""
    base, _ = goldens
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    data = torch.randn(8, 3, 64, 64)
    checks = base["checks"]
    assert abs(sum(p.double().sum().item() for p in model.parameters()) - checks["model_param_sum"]) < 1e-6
    assert abs(data.double().sum().item() - checks["data_sum"]) < 1e-6
    return model, data


def _fit(goldens, setup, **extra):
    base, _ = goldens
    model, data = setup
    cfg = base["config"]
    nf = neurflow.NeurFlow(**{**golden_settings(cfg), **extra})
    nf.fit(model, data, target=base["checks"]["target_class"], layers=cfg["layers_top_down"])
    return nf.circuit_


def test_adaptive_core_sets(goldens, setup):
    _, extra = goldens
    settings = extra["adaptive"]["settings"]
    assert settings["tau_cap"] == 4 and settings["top_k"] == 10
    circuit = _fit(goldens, setup, adaptive_eps=settings["acceptable_error_range"])
    ref_layers = extra["adaptive"]["layers"]
    assert sorted(l.name for l in circuit.layers) == sorted(ref_layers)
    for layer in circuit.layers:
        ref = ref_layers[layer.name]
        assert set(layer.nodes) == {int(n) for n in ref}, layer.name
        for n, node in layer.nodes.items():
            assert list(node.core) == ref[str(n)][f"core_in_{layer.lower}"], (layer.name, n)


@pytest.fixture(scope="module")
def fixed_run(goldens, setup):
    return _fit(goldens, setup)


def _published_ids(base, layer):
    """Our group id -> the published group id, by equal member sets (groups equal up to relabelling)."""
    theirs: dict = {}
    for n, subs in base["layer_groups"][layer.name]["assign"].items():
        for s, g in subs.items():
            theirs.setdefault(int(g), set()).add((int(n), int(s)))
    return {G.id: next(g for g, m in theirs.items() if m == set(G.members)) for G in layer.groups}


def _centre_distances(circuit, layer, group):
    vecs = np.stack([circuit.concept_vector(layer.name, n, s) for n, s in group.members])
    return np.linalg.norm(vecs - vecs.mean(axis=0), axis=1)


def _valid_representatives(circuit, layer, group, n):
    """Every set of ``n`` members nearest the group centre.  More than one where members tie at
    the cut: sub-concepts with the same exemplar crops have the same concept vector, and the
    published code then picks among them by float32 rounding noise of its means."""
    members = list(group.members)
    if n is None or n >= len(members):
        return [set(members)]
    d = _centre_distances(circuit, layer, group)
    cut = d[n - 1]
    tol = 1e-6 * cut + 1e-12
    sure = [m for m, x in zip(members, d) if x < cut - tol]
    tied = [m for m, x in zip(members, d) if abs(x - cut) <= tol]
    return [set(sure) | set(c) for c in itertools.combinations(tied, n - len(sure))]


def _score(layer, members, resp):
    acts: dict = {}
    for n, s in members:
        acts.setdefault(n, []).append(layer.nodes[n].sub_concepts[s].activation)
    neurons = np.array([n for n, _ in members])
    return float(crop_scores(resp, neurons, np.array([np.mean(acts[n]) for n in neurons]))[0].max())


def test_debug_scores(goldens, setup, fixed_run):
    """16 published scores (2 images x 2 layers x 2 groups, 5 representatives and all members)."""
    base, extra = goldens
    model, data = setup
    circuit = fixed_run
    cfg = circuit.config
    graph = LayerGraph(model, circuit.layer_names, ())
    exact, tied, worst = 0, 0, 0.0
    for key, ref in extra["debug_scores"]["scores"].items():
        image, layer_name, reps = key.split("_", 2)
        n = reps.removeprefix("num_top_vecs")
        representatives = "all" if n == "None" else int(n)
        layer = circuit.layer(layer_name)
        ids = _published_ids(base, layer)
        x = data[int(image.removeprefix("image"))]
        res = debug_image(circuit, model, x, layer_name, representatives=representatives)
        assert res["representatives"] == representatives
        assert len(res["groups"]) == len(ref)
        resp = _responses(graph, x, cfg, layer_name)
        for row in res["groups"]:
            want = ref[str(ids[row["group"]])]
            G = layer.groups[row["group"]]
            valid = _valid_representatives(circuit, layer, G, None if n == "None" else int(n))
            ours = {tuple(m) for m in row["representatives"]}
            assert ours in valid, (key, row["group"])
            assert row["score"] == pytest.approx(_score(layer, sorted(ours), resp))
            if len(valid) == 1:
                assert close(row["score"], want), (key, row["group"], row["score"], want)
                worst = max(worst, abs(row["score"] - want) / abs(want))
                exact += 1
            else:  # the published pick among tied members is one of the valid sets
                assert any(close(_score(layer, sorted(v), resp), want) for v in valid), (key, row["group"], want)
                tied += 1
    assert exact + tied == 16 and exact >= 14
    print(f"debug scores: {exact} matched exactly (max relative error {worst:.2e}), {tied} among tied members")


def _responses(graph, image, cfg, layer_name):
    pool = CropPool(image[None].float(), cfg.granularities, cfg.stride_ratio)
    return pool_responses(graph, pool, [layer_name], cfg.batch_size, "cpu")[layer_name]


def test_representatives_are_the_members_nearest_the_centre(fixed_run):
    """Groups list their members nearest the centre first: the first N are the representatives."""
    for layer in fixed_run.layers[1:]:
        for G in layer.groups:
            d = _centre_distances(fixed_run, layer, G)
            assert np.all(np.diff(d) >= -1e-9), (layer.name, G.id)
