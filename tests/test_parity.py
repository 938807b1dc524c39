"""Number-for-number agreement with the published code on tests/fixtures/parity/resnet18-64px.json
(and resnet18-224px.json in the slow tier)."""

import json
import random

import numpy as np
import pytest
import torch
import torchvision

import neurflow

from conftest import PARITY, golden_settings

GOLDENS = [
    pytest.param("resnet18-64px.json", id="64px"),
    pytest.param("resnet18-224px.json", id="224px", marks=pytest.mark.slow),
]


def close(a, b):
    # 1e-4 relative; the golden values are rounded to 5 decimals, so allow half a unit of that
    return abs(a - b) <= 1e-4 * abs(b) + 0.5e-5


@pytest.fixture(scope="module", params=GOLDENS)
def golden_run(request):
    golden = json.loads((PARITY / request.param).read_text())  # a missing fixture fails, never skips
    size = int(golden["config"]["data"].rstrip(")").split(",")[-1])
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    data = torch.randn(8, 3, size, size)
    checks = golden["checks"]
    assert abs(sum(p.double().sum().item() for p in model.parameters()) - checks["model_param_sum"]) < 1e-6
    assert abs(data.double().sum().item() - checks["data_sum"]) < 1e-6
    assert np.allclose(data.flatten()[:5].numpy(), checks["data_first5"])
    with torch.no_grad():
        assert model(data).argmax(1).tolist() == checks["predictions"]
    cfg = golden["config"]
    nf = neurflow.NeurFlow(**golden_settings(cfg))
    nf.fit(model, data, target=checks["target_class"], layers=cfg["layers_top_down"])
    assert nf.circuit_.meta["n_crops"] == checks["n_crops"]
    assert {str(k): int(v) for k, v in nf.circuit_.meta["crop_sizes"].items()} == checks["crop_size_counts"]
    return golden, nf.circuit_


def test_core_sets_sub_concepts_and_exemplars(golden_run):
    golden, circuit = golden_run
    assert [l.name for l in circuit.layers] == golden["config"]["layers_top_down"][:-1]
    for layer in circuit.layers:
        ref = golden["layers"][layer.name]
        assert set(layer.nodes) == {int(n) for n in ref}
        for n, node in layer.nodes.items():
            r = ref[str(n)]
            assert list(node.core) == r[f"core_in_{layer.lower}"]
            assert len(node.sub_concepts) == r["n_sub_concepts"]
            for sc, rs in zip(node.sub_concepts, r["sub_concepts"]):
                assert list(sc.display_exemplars) == rs["display_exemplars"]
                assert close(sc.activation, rs["activation"])
                assert set(sc.weights) == {int(j) for j in rs["weights_reference_norm"]}
                for j, w in rs["weights_reference_norm"].items():
                    assert close(sc.weights[int(j)], w), (layer.name, n, j)


def _partition(assign_pairs):
    groups = {}
    for key, g in assign_pairs:
        groups.setdefault(g, set()).add(key)
    return {frozenset(v) for v in groups.values()}


def test_layer_groups_equal_up_to_relabelling(golden_run):
    golden, circuit = golden_run
    for name, ref in golden["layer_groups"].items():
        layer = circuit.layer(name)
        assert len(layer.groups) == ref["n_groups"]
        ours = _partition(((n, s.id), s.group) for n, node in layer.nodes.items() for s in node.sub_concepts)
        theirs = _partition(((int(n), int(s)), g) for n, subs in ref["assign"].items() for s, g in subs.items())
        assert ours == theirs


def test_group_edges_reference(golden_run):
    golden, circuit = golden_run
    upper, lower = circuit.layer("layer4.1"), circuit.layer("layer4.0")
    ref = golden["group_edges_layer4.1_to_layer4.0_reference"]
    ref_parts = {
        int(g): {
            (int(n), int(s))
            for n, subs in golden["layer_groups"]["layer4.1"]["assign"].items()
            for s, gg in subs.items()
            if gg == int(g)
        }
        for g in ref
    }
    low_parts = {
        int(g): {
            (int(n), int(s))
            for n, subs in golden["layer_groups"]["layer4.0"]["assign"].items()
            for s, gg in subs.items()
            if gg == int(g)
        }
        for g in range(2)
    }
    for G in upper.groups:
        their_G = next(g for g, members in ref_parts.items() if members == set(G.members))
        for g in lower.groups:
            their_g = next(k for k, members in low_parts.items() if members == set(g.members))
            assert close(upper.group_edges[G.id][g.id], ref[str(their_G)][str(their_g)])
