import numpy as np
import pytest
import torch

import neurflow
from neurflow.auditing import audit, split
from neurflow.errors import NeurFlowError

from conftest import SKIP_LAYERS, assert_same_state, model_state
from test_probe import manual

SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), batch_size=16)


@pytest.fixture
def setup(skipnet):
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


def test_drops_and_score_match_a_brute_force_ablation(skipnet, setup):
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
        abl = manual(skipnet, images, row["neurons"])
    drop = (base - abl[:, t]).numpy()
    assert row["fp_logit_drop"] == pytest.approx(drop[fp].mean(), abs=1e-5)
    assert row["tp_logit_drop"] == pytest.approx(drop[tp].mean(), abs=1e-5)
    assert row["score"] == pytest.approx(row["fp_logit_drop"] - row["tp_logit_drop"], abs=1e-9)
    assert row["fp_fixed"] == pytest.approx(float((abl[fp].argmax(1) != t).float().mean()))
    scores = [r["score"] for r in res["groups"]]
    assert scores == sorted(scores, reverse=True)
    # every group of every layer below the class layer, nothing of the class layer
    want = {(l.name, g.id) for l in c.layers[1:] for g in l.groups}
    assert {(r["layer"], r["group"]) for r in res["groups"]} == want
    for r in res["groups"]:
        assert set(r) >= {"layer", "group", "fp_logit_drop", "tp_logit_drop", "score"}
        layer = c.layer(r["layer"])
        assert r["exemplars"] == layer.group_exemplars(layer.groups[r["group"]])
    assert_same_state(before, model_state(skipnet))


def test_sampling_is_seeded_and_capped():
    pred = torch.tensor([1] * 30 + [0] * 5)
    labels = torch.tensor([1] * 10 + [2] * 20 + [0] * 5)
    fp, tp, totals = split(pred, labels, 1, 8, seed=0)
    assert totals == {"false_positives": 20, "true_positives": 10} and len(fp) == 8 and len(tp) == 8
    assert np.array_equal(fp, split(pred, labels, 1, 8, seed=0)[0])
    assert set(fp) <= set(range(10, 30)) and list(fp) == sorted(fp)


def test_bad_input(skipnet, setup):
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
