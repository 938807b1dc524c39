import numpy as np
import pytest
import torch

import neurflow
from neurflow.analysis.audit import audit, measures, split
from neurflow.analysis.candidates import layer_candidates
from neurflow.errors import NeurFlowError
from neurflow.method.clustering import cut, linkage_tree

from conftest import SKIP_LAYERS, SkipNet, assert_same_state, model_state, skipnet_zeroed

SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), batch_size=16)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SkipNet().eval()


@pytest.fixture(scope="module")
def setup(net):
    skipnet = net
    torch.manual_seed(3)
    images = torch.randn(40, 3, 16, 16)
    with torch.no_grad():
        pred = skipnet(images).argmax(1)
    target = int(torch.mode(pred).values)
    labels = pred.clone()
    hits = (pred == target).nonzero().flatten()
    labels[hits[::2]] = (target + 1) % 5  # half of the target's predictions become mistakes
    c = neurflow.NeurFlow(**SETTINGS).fit(skipnet, images, target=target, layers=SKIP_LAYERS).circuit_
    return c, images, labels, target


@pytest.fixture(scope="module")
def result(net, setup):
    c, images, labels, _ = setup
    return audit(c, net, images, labels, max_images=100)


def test_drops_and_score_match_a_brute_force_ablation(net, setup):
    skipnet = net
    c, images, labels, t = setup
    before = model_state(skipnet)
    res = audit(c, skipnet, images, labels, max_images=100)
    assert res["n_false_positives"] > 0 and res["n_true_positives"] > 0
    fp, tp = res["false_positive_indices"], res["true_positive_indices"]
    with torch.no_grad():
        pred = skipnet(images).argmax(1)
    assert all(pred[i] == t and labels[i] != t for i in fp) and all(pred[i] == t and labels[i] == t for i in tp)
    assert len(fp) + len(tp) == int((pred == t).sum())
    row = next(r for r in res["groups"] if r["layer"] == "block3")
    with torch.no_grad():
        base = skipnet(images)[:, t]
        abl = skipnet_zeroed(skipnet, images, row["neurons"])
    drop = (base - abl[:, t]).numpy()
    assert row["fp_logit_drop"] == pytest.approx(drop[fp].mean(), abs=1e-5)
    assert row["tp_logit_drop"] == pytest.approx(drop[tp].mean(), abs=1e-5)
    assert row["logit_score"] == pytest.approx(row["fp_logit_drop"] - row["tp_logit_drop"], abs=1e-9)
    assert row["fp_fixed"] == pytest.approx(float((abl[fp].argmax(1) != t).float().mean()))
    scores = [r["score"] for r in res["groups"]]
    assert scores == sorted(scores, reverse=True)
    # every group of every layer below the class layer, nothing of the class layer
    want = {(l.name, g.id) for l in c.layers[1:] for g in l.groups}
    assert {(r["layer"], r["group"]) for r in res["groups"] if r["kind"] == "group"} == want
    for r in res["groups"]:
        assert set(r) >= {"layer", "kind", "group", "fp_logit_drop", "tp_logit_drop", "score", "logit_score"}
        layer = c.layer(r["layer"])
        if r["kind"] == "group":
            assert r["exemplars"] == layer.group_exemplars(layer.groups[r["group"]])
    assert_same_state(before, model_state(skipnet))


def hand_margin(out, t):
    others = np.delete(out, t, axis=1)
    return out[:, t] - others.max(1)


def test_every_candidate_matches_a_direct_zeroing_forward(net, setup, result):
    """Each row's numbers against the model run with hand-written forward hooks (not the audit's
    sliced path), and the score against the formula written out in NumPy."""
    skipnet, res = net, result
    c, images, labels, t = setup
    fp, tp = res["false_positive_indices"], res["true_positive_indices"]
    idx = fp + tp
    nf = len(fp)
    modules = dict(skipnet.named_modules())
    with torch.no_grad():
        ref = skipnet(images[idx]).numpy()
    assert len({r["kind"] for r in res["groups"]}) >= 2  # groups and finer candidates
    for r in res["groups"]:
        h = modules[r["layer"]].register_forward_hook(
            lambda m, a, o, n=r["neurons"]: o.index_fill(1, torch.tensor(n), 0)
        )
        try:
            with torch.no_grad():
                out = skipnet(images[idx]).numpy()
        finally:
            h.remove()
        m0, m1 = hand_margin(ref, t), hand_margin(out, t)
        removed = np.clip((m0 - m1) / m0, 0, 1)
        assert r["fp_margin_removed"] == pytest.approx(removed[:nf].mean(), abs=1e-5)
        assert r["tp_margin_removed"] == pytest.approx(removed[nf:].mean(), abs=1e-5)
        assert r["score"] == pytest.approx(removed[:nf].mean() - removed[nf:].mean(), abs=1e-5)
        drop = ref[:, t] - out[:, t]
        assert r["logit_score"] == pytest.approx(drop[:nf].mean() - drop[nf:].mean(), abs=1e-4)
        assert r["fp_fixed"] == pytest.approx(float((out[:nf].argmax(1) != t).mean()))
        assert r["tp_kept"] == pytest.approx(float((out[nf:].argmax(1) == t).mean()))
    # the joint fix of the best rows: their neurons zeroed together, across layers
    for m in range(1, 4):
        zero: dict = {}
        for r in res["groups"][:m]:
            zero.setdefault(r["layer"], set()).update(r["neurons"])
        hs = [
            modules[name].register_forward_hook(lambda mod, a, o, n=sorted(v): o.index_fill(1, torch.tensor(n), 0))
            for name, v in zero.items()
        ]
        try:
            with torch.no_grad():
                out = skipnet(images[idx]).numpy()
        finally:
            for h in hs:
                h.remove()
        assert res["groups"][m - 1]["joint_fp_fixed"] == pytest.approx(float((out[:nf].argmax(1) != t).mean()))
        assert res["groups"][m - 1]["joint_tp_kept"] == pytest.approx(float((out[nf:].argmax(1) == t).mean()))
    assert "joint_fp_fixed" not in res["groups"][5] if len(res["groups"]) > 5 else True


def test_score_formula_on_hand_made_numbers():
    t = 0
    # margins before: 2, 4 (false positives), 1, 10 (true positives)
    ref = torch.tensor([[3.0, 1.0, 0.0], [5.0, 1.0, 0.0], [2.0, 1.0, 0.0], [10.0, 0.0, -1.0]])
    # after: margins -1 (flipped), 3, 1 (unchanged), 12 (rose)
    out = torch.tensor([[1.0, 2.0, 0.0], [4.0, 1.0, 0.0], [2.0, 1.0, 0.0], [12.0, 0.0, 0.0]])
    got = measures(ref, out, t, nf=2)
    assert got["fp_margin_removed"] == pytest.approx((1.0 + 0.25) / 2)
    assert got["tp_margin_removed"] == pytest.approx(0.0)
    assert got["score"] == pytest.approx(0.625)
    assert got["fp_logit_drop"] == pytest.approx(1.5) and got["tp_logit_drop"] == pytest.approx(-1.0)
    assert got["logit_score"] == pytest.approx(2.5)
    assert got["fp_fixed"] == pytest.approx(0.5) and got["tp_kept"] == pytest.approx(1.0)


def test_candidates_walk_the_ward_tree_of_the_groups(setup):
    c, *_ = setup
    for layer in c.layers[1:]:
        keys = c.arrays[f"concept_keys/{layer.name}"]
        vectors = c.arrays[f"concept_vectors/{layer.name}"]
        cands = layer_candidates(layer, keys, vectors, 10**6)
        kinds = [x["kind"] for x in cands]
        n_groups = len(layer.groups)
        assert kinds[:n_groups] == ["group"] * n_groups and "group" not in kinds[n_groups:]
        assert [x["neurons"] for x in cands[:n_groups]] == [g.neurons for g in layer.groups]
        assert len({frozenset(x["neurons"]) for x in cands}) == len(cands)  # no neuron set twice
        # every sub-cluster is a cluster of a finer cut of the same tree, inside its group
        children = linkage_tree(vectors)
        n = len(keys)
        clusters = set()
        for k in range(1, n + 1):
            lab = cut(children, n, k)
            for v in np.unique(lab):
                clusters.add(frozenset(tuple(int(a) for a in keys[i]) for i in np.nonzero(lab == v)[0]))
        members_of = {g.id: set(g.members) for g in layer.groups}
        for x in cands[n_groups:]:
            assert frozenset(x["members"]) in clusters
            assert set(x["members"]) <= members_of[x["group"]]
            assert (x["kind"] == "neuron") == (len(x["neurons"]) == 1)
        # down to single neurons: every node of the layer is a candidate of its own
        singles = {x["neurons"][0] for x in cands if len(x["neurons"]) == 1}
        assert singles == set(layer.nodes)
        # the budget caps the sub-clusters per layer; the groups always stay
        small = layer_candidates(layer, keys, vectors, 2)
        assert small == cands[: n_groups + 2] if len(cands) >= n_groups + 2 else small == cands


def test_false_positive_exemplars(result):
    res = result
    fp = set(res["false_positive_indices"])
    for r in res["groups"][:10]:
        ex = r["fp_exemplars"]
        assert ex and len({e["index"] for e in ex}) == len(ex) and {e["index"] for e in ex} <= fp
        acts = [e["activation"] for e in ex]
        assert acts == sorted(acts, reverse=True) and 0 <= acts[-1] and acts[0] <= 1 + 1e-6
        assert all(0 <= e["box"][0] and e["box"][0] + e["box"][2] <= 16 for e in ex)
        if len(r["neurons"]) == 1:  # one neuron, normalised by its own maximum: the best crop is 1
            assert acts[0] == pytest.approx(1.0)
    assert all("fp_exemplars" not in r for r in res["groups"][10:])


def test_sampling_is_seeded_and_capped():
    pred = torch.tensor([1] * 30 + [0] * 5)
    labels = torch.tensor([1] * 10 + [2] * 20 + [0] * 5)
    fp, tp, totals = split(pred, labels, 1, 8, seed=0)
    assert totals == {"false_positives": 20, "true_positives": 10} and len(fp) == 8 and len(tp) == 8
    assert np.array_equal(fp, split(pred, labels, 1, 8, seed=0)[0])
    assert set(fp) <= set(range(10, 30)) and list(fp) == sorted(fp)


def test_bad_input(net, setup):
    skipnet = net
    c, images, labels, t = setup
    with pytest.raises(NeurFlowError, match="labelled data"):
        audit(c, skipnet, images, None)
    with pytest.raises(NeurFlowError, match="no false positives"):
        with torch.no_grad():
            audit(c, skipnet, images, skipnet(images).argmax(1))
    with pytest.raises(NeurFlowError, match="did you mean block3"):
        audit(c, skipnet, images, labels, layers=["blok3"])
    with pytest.raises(NeurFlowError, match="one label per image"):
        audit(c, skipnet, images, labels[:5])
    with pytest.raises(NeurFlowError, match="max_candidates"):
        audit(c, skipnet, images, labels, max_candidates=0)
