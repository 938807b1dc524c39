import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neurflow
from neurflow.analysis.debug import crop_scores, debug_image, group_references, image_name
from neurflow.errors import NeurFlowError

from conftest import SKIP_LAYERS, assert_same_state, majority_class, model_state, skipnet_zeroed

SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), batch_size=16)


@pytest.fixture
def fitted(skipnet, tiny_images):
    nf = neurflow.NeurFlow(**SETTINGS).fit(
        skipnet, tiny_images, target=majority_class(skipnet, tiny_images), layers=SKIP_LAYERS
    )
    return nf.circuit_


def block3_crops(model, image, granularities=(1.0, 0.5), stride_ratio=0.5):
    """Brute force: every crop cut by hand, resized, run through SkipNet's blocks by hand."""
    size = image.shape[-1]
    boxes, outs = [], []
    for g in granularities:
        s = int(g * size)
        stride = max(min(int(s * stride_ratio), size - s), 1) if s < size else size
        pos = [0] if s == size else list(range(0, size - s + 1, stride))
        for y in pos:
            for x in pos:
                crop = image[None, :, y : y + s, x : x + s]
                if s != size:
                    crop = F.interpolate(crop, size=size, mode="bilinear", align_corners=False)
                with torch.no_grad():
                    st = model.stem(crop)
                    b = model.block2(model.block1(st)) + st
                    outs.append(model.block3(b).mean((2, 3))[0].numpy())
                boxes.append([y, x, s, s])
    return boxes, np.stack(outs)


@pytest.mark.parametrize("representatives", [5, 2, "all"])
def test_group_scores_match_the_formula_by_brute_force(skipnet, tiny_images, fitted, representatives):
    layer = fitted.layer("block3")
    image = tiny_images[2]
    res = debug_image(fitted, skipnet, image, "block3", threshold=0.5, representatives=representatives)
    assert res["representatives"] == representatives
    boxes, acts = block3_crops(skipnet, image)
    assert res["n_crops"] == len(boxes) == 10
    for g in layer.groups:
        # the published rule: the first N members (nearest the centre); a neuron enters once per
        # representative sub-concept of it, with r_j the mean activation of those sub-concepts
        reps = g.members if representatives == "all" else g.members[:representatives]
        members = {}
        for n, s in reps:
            members.setdefault(n, []).append(layer.nodes[n].sub_concepts[s].activation)
        best_pub = best_clip = -math.inf
        for p in range(len(boxes)):
            logs, clogs = [], []
            for j, _ in reps:
                r = sum(members[j]) / len(members[j])
                ratio = max(float(acts[p, j]), 0.0) / (abs(r) + 1e-6)
                logs.append(math.log(ratio + 1e-6))
                clogs.append(math.log(min(ratio, 1.0) + 1e-6))
            best_pub = max(best_pub, sum(logs) / len(logs))
            best_clip = max(best_clip, sum(clogs) / len(clogs))
        got = next(e for e in res["groups"] if e["group"] == g.id)
        assert got["representatives"] == [list(m) for m in reps]
        assert got["neurons"] == list(g.neurons)  # the verification zeroes the whole group
        assert got["score"] == pytest.approx(math.exp(best_pub), rel=1e-4)
        assert got["score_clipped"] == pytest.approx(math.exp(best_clip), rel=1e-4)
        assert got["score_clipped"] <= 1.0 + 1e-9
        for c in got["crops"]:
            assert c["box"] in boxes
            if got["strong"]:
                assert c["score"] >= 0.5
    scores = [e["score"] for e in res["groups"]]
    assert scores == sorted(scores, reverse=True) and res["strongest"] == res["groups"][0]["group"]


def test_representatives_default_and_bad_values(skipnet, tiny_images, fitted):
    assert debug_image(fitted, skipnet, tiny_images[0])["representatives"] == 5  # the published num_top_vecs
    assert debug_image(fitted, skipnet, tiny_images[0], representatives="3")["representatives"] == 3
    for bad in (0, -1, "x", 1.5, True):
        with pytest.raises(NeurFlowError, match="representatives"):
            debug_image(fitted, skipnet, tiny_images[0], representatives=bad)


def test_verification_matches_a_hand_written_ablation(skipnet, tiny_images, fitted):
    before = model_state(skipnet)
    image = tiny_images[0]
    res = debug_image(fitted, skipnet, image)  # default layer: the highest below the class
    assert res["layer"] == "block3"
    v = res["verification"]
    with torch.no_grad():
        plain = skipnet(image[None])[0]
        ablated = skipnet_zeroed(skipnet, image[None], v["neurons"])[0]
    t = fitted.target
    assert v["target_logit_before"] == pytest.approx(float(plain[t]), abs=1e-5)
    assert v["target_logit_after"] == pytest.approx(float(ablated[t]), abs=1e-5)
    assert v["target_logit_change"] == pytest.approx(float(ablated[t] - plain[t]), abs=1e-5)
    assert [e["class"] for e in v["top5_after"]] == ablated.topk(5).indices.tolist()
    assert v["prediction_changed"] == (int(plain.argmax()) != int(ablated.argmax()))
    assert set(v["neurons"]) == set(fitted.layer("block3").groups[res["strongest"]].neurons)
    assert_same_state(before, model_state(skipnet))


def test_trace_goes_down_by_weight_times_score(skipnet, tiny_images, fitted):
    res = debug_image(fitted, skipnet, tiny_images[1], "block3")
    assert [s["layer"] for s in res["trace"]] == ["block2"]
    step = res["trace"][0]
    upper = fitted.layer("block3")
    for row in step["groups"]:
        w = upper.group_edges[res["strongest"]].get(row["group"], 0.0)
        assert row["weight"] == pytest.approx(w)
        assert row["contribution"] == pytest.approx(w * row["score_clipped"])
    contrib = [r["contribution"] for r in step["groups"]]
    assert contrib == sorted(contrib, reverse=True) and len(contrib) <= fitted.settings["top_n"]


@pytest.mark.parametrize("representatives", [None, 3, 1])
def test_group_references_average_the_representatives(fitted, representatives):
    layer = fitted.layer("block2")
    refs = group_references(layer, representatives)
    for g in layer.groups:
        reps = g.members if representatives is None else g.members[:representatives]
        neurons, r = refs[g.id]
        assert list(neurons) == [n for n, _ in reps]  # once per representative sub-concept
        for j, rj in zip(neurons, r):
            acts = [layer.nodes[n].sub_concepts[s].activation for n, s in reps if n == j]
            assert rj == pytest.approx(np.mean(acts))


def test_crop_scores_closed_form():
    resp = np.array([[2.0, 0.5, -1.0], [4.0, 1.0, 3.0]])
    pub, clip = crop_scores(resp, np.array([0, 1]), np.array([2.0, 1.0]))
    assert pub[1] == pytest.approx(math.sqrt(2 * 1), rel=1e-5)  # ratios 2 and 1
    assert clip[1] == pytest.approx(1.0, rel=1e-5)  # both clipped to 1
    assert pub[0] == pytest.approx(math.sqrt(1 * 0.5), rel=1e-5)
    pub, _ = crop_scores(resp, np.array([2]), np.array([1.0]))
    assert pub[0] == pytest.approx(1e-6, rel=1e-3)  # negative response -> max(., 0)


@pytest.mark.parametrize(
    "layer,needle", [("head", "below the class layer"), ("block1", "input"), ("blok3", "did you mean block3")]
)
def test_bad_layers(skipnet, tiny_images, fitted, layer, needle):
    with pytest.raises(NeurFlowError, match=needle):
        debug_image(fitted, skipnet, tiny_images[0], layer)


def test_bad_image_and_threshold(skipnet, tiny_images, fitted):
    with pytest.raises(NeurFlowError, match="^image: "):
        debug_image(fitted, skipnet, torch.zeros(3, 20, 20))
    with pytest.raises(NeurFlowError, match="^threshold: "):
        debug_image(fitted, skipnet, tiny_images[0], threshold=-1)


def test_image_names():
    assert image_name("12") == "index-12"
    assert image_name("/x/My Photo (1).JPG") == "My-Photo-1"
    assert image_name("../../etc/passwd") == "passwd"


def test_debug_and_audit_on_a_torchvision_resnet18_with_random_weights():
    from neurflow.analysis.audit import audit
    from neurflow.sources.models import load_model

    model = load_model("torchvision:resnet18", seed=0).model
    before = model_state(model)
    torch.manual_seed(0)
    images = torch.randn(8, 3, 64, 64)
    t = majority_class(model, images)
    c = (
        neurflow.NeurFlow(tau=4, top_k=5, ig_steps=8, granularities=(1.0, 0.5), batch_size=8)
        .fit(model, images, target=t, layers=["fc", "layer4.1", "layer4.0", "layer3.1"])
        .circuit_
    )
    res = debug_image(c, model, images[0], "layer4.1", threshold=0.5)
    v = res["verification"]

    def forward(x, zero=()):
        with torch.no_grad():
            h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            h = model.layer4[1](model.layer4[0](model.layer3(model.layer2(model.layer1(h))))).clone()
            h[:, list(zero)] = 0
            return model.fc(torch.flatten(model.avgpool(h), 1))

    want = forward(images[:1], v["neurons"])[0]
    assert v["target_logit_after"] == pytest.approx(float(want[t]), abs=1e-4)
    assert v["target_logit_before"] == pytest.approx(float(forward(images[:1])[0, t]), abs=1e-4)
    assert [s["layer"] for s in res["trace"]] == ["layer4.0"]
    with torch.no_grad():
        pred = model(images).argmax(1)
    labels = pred.clone()
    hits = (pred == t).nonzero().flatten()
    labels[hits[::2]] = (t + 1) % 1000
    if len(hits) >= 2:
        rep = audit(c, model, images, labels)
        row = next(r for r in rep["groups"] if r["layer"] == "layer4.1")
        drop = (forward(images)[:, t] - forward(images, row["neurons"])[:, t]).numpy()
        assert row["fp_logit_drop"] == pytest.approx(drop[rep["false_positive_indices"]].mean(), abs=1e-4)
    assert_same_state(before, model_state(model))
