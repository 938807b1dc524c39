"""``neurflow eval``: each metric's arithmetic against hand-computed cases on a tiny model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import neurflow
from neurflow.analysis.evaluate import Context, Options
from neurflow.analysis.evaluate.common import Checkpoint, masked, pearson, topk_overlap
from neurflow.analysis.evaluate.edges import edge_correlation, k_impact, optimality, weight_norm
from neurflow.analysis.evaluate.fidelity import fidelity, mct_ranking
from neurflow.analysis.run import Run
from neurflow.cli import main
from neurflow.errors import NeurFlowError
from neurflow.sources.datasets import Dataset

from conftest import SKIP_LAYERS, SkipNet, assert_same_state, model_state

SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), batch_size=16)


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    model = SkipNet().eval()
    torch.manual_seed(1)
    images = torch.randn(12, 3, 16, 16)
    with torch.no_grad():
        pred = model(images).argmax(1)
    target = int(torch.mode(pred).values)
    neurflow.NeurFlow(**SETTINGS).fit(model, images, target=target, layers=SKIP_LAYERS, out=tmp_path / "run")
    return Run(tmp_path / "run", quiet=True).attach(model, Dataset(images, pred.clone()))


def opts(**kw):
    return Options(
        **{
            "draws": 2,
            "subsets": 3,
            "sizes": (1, 2, 4),
            "random_sets": 5,
            "nodes": 1,
            "max_crops": 0,
            "max_images": 0,
            "ks": (2, 4, 6),
            **kw,
        }
    )


def forward(model, x, zero: dict):
    """SkipNet's forward by hand, channels zeroed at block3 / block2 / block1: the oracle."""
    with torch.no_grad():
        s = model.stem(x)
        a = model.block1(s).clone()
        a[:, zero.get("block1", [])] = 0
        b = model.block2(a).clone()
        b[:, zero.get("block2", [])] = 0
        c = model.block3(b + s).clone()
        c[:, zero.get("block3", [])] = 0
        return model.head(c.mean((2, 3)))


def test_overlap_and_pearson_by_hand():
    assert topk_overlap(np.array([5, 4, 3, 2, 1.0]), np.array([5, 0, 3, 9, 1.0]), 3) == pytest.approx(2 / 3)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_fidelity_against_hand_ablation(run):
    before = model_state(run.model)
    ctx = Context(run, opts(draws=1))
    r = fidelity(ctx)
    c, x, t = run.circuit, ctx.run.class_images, run.circuit.target
    acc = lambda zero: float((forward(run.model, x, zero).argmax(1) == t).float().mean())  # noqa: E731
    sets = {
        "block3": sorted(c.layer("block3").nodes),
        "block2": sorted(c.layer("block2").nodes),
        "block1": sorted({j for n in c.layer("block2").nodes.values() for j in n.core}),
    }
    width = {"block3": 16, "block2": 8, "block1": 12}
    comp = lambda n: [i for i in range(width[n]) if i not in sets[n]]  # noqa: E731
    assert [row["layer"] for row in r["layers"]] == ["block3", "block2", "block1"]
    for row in r["layers"]:
        n = row["layer"]
        assert row["n_neurons"] == len(sets[n]) and row["n_channels"] == width[n]
        assert row["core_mask_accuracy"] == pytest.approx(acc({n: sets[n]}))
        assert row["core_retain_accuracy"] == pytest.approx(acc({n: comp(n)}))
    multi = {row["layer"]: row for row in r["multi_layer"]}
    assert multi["block2"]["core_mask_accuracy"] == pytest.approx(
        acc({"block3": sets["block3"], "block2": sets["block2"]})
    )
    assert multi["block1"]["core_retain_accuracy"] == pytest.approx(acc({n: comp(n) for n in sets}))
    # the first random draw, reproduced
    first = sorted(np.random.RandomState(0).choice(16, len(sets["block3"]), replace=False).tolist())
    assert r["layers"][0]["random_mask_accuracy"] == pytest.approx(acc({"block3": first}))
    assert r["baseline_accuracy"] == 1.0 and run.dir.eval_file("fidelity", "png").is_file()
    assert not run.dir.eval_partial("fidelity").exists()
    assert_same_state(before, model_state(run.model))


def test_masked_responses_and_optimality_by_hand(run):
    ctx = Context(run, opts())
    t = run.circuit.target
    crops = np.arange(len(ctx.run.pool))
    sets = [[0, 3], [5]]
    got = masked(ctx, "head", "block3", t, sets, crops)
    for row, s in zip(got, sets):
        want = forward(run.model, ctx.run.pool.get(crops), {"block3": s})[:, t].numpy()
        assert np.allclose(row, want, atol=1e-5)
    r = optimality(ctx)
    head = r["nodes"][0]
    assert head["layer"] == "head" and head["node"] == t
    base = forward(run.model, ctx.run.pool.get(crops), {})[:, t].numpy()
    core = list(run.circuit.layer("head").nodes[t].core)
    after = forward(run.model, ctx.run.pool.get(crops), {"block3": core})[:, t].numpy()
    assert head["core_overlap"] == pytest.approx(topk_overlap(base, after, 6))
    rand = np.asarray(head["random"])
    assert head["share_random_at_or_above_core"] == pytest.approx((rand >= head["core_overlap"]).mean())
    assert len(rand) == 5 and head["random_overlap_mean"] == pytest.approx(rand.mean())


def test_edge_correlation_arithmetic(run):
    ctx = Context(run, opts())
    r = edge_correlation(ctx)
    head = r["nodes"][0]
    p = np.asarray(head["points"])
    assert head["n_subsets"] == 9 and sorted(set(p[:, 0].astype(int))) == [1, 2, 4]
    assert head["pearson_sum"] == pytest.approx(np.corrcoef(p[:, 1], p[:, 2])[0, 1])
    # the importances are the run's IG: the circuit's importance of the core neurons, reproduced
    from neurflow.analysis.evaluate.common import ig_importance

    t = run.circuit.target
    _, imp = ig_importance(ctx, "head", "block3", t, 6)
    node = run.circuit.layer("head").nodes[t]
    assert np.allclose(imp[list(node.core)], node.importance, rtol=1e-5)


def test_mct_ranking_closed_form(run):
    """Class logit = w_t . mean(block3): IG of a linear map is w * a, so the channel score is
    |w_tc * mean(a_c)| / (H W); the ranking follows by hand."""
    ctx = Context(run, opts())
    t = run.circuit.target
    got = mct_ranking(ctx, "block3", 0, np.random.RandomState(0))
    with torch.no_grad():
        s = run.model.stem(ctx.run.class_images)
        a = run.model.block3(run.model.block2(run.model.block1(s)) + s).mean((2, 3))
    score = (run.model.head.weight[t] * a).abs().mean(0).detach().numpy()
    assert list(got[:5]) == list(np.argsort(-score, kind="stable")[:5])


def test_k_and_weight_norm(run):
    """E8 and E11 recomputed by hand on SkipNet.  The class logit is w_t . mean_hw(block3), a linear
    map of post-ReLU activations, so IG from zero is exact and the mean |IG| of channel c over the
    exemplars is proportional to |w_tc| * mean over the exemplars of mean_hw(block3_c)."""
    ctx = Context(run, opts(ks=(1, 2, 20, 120, 500)))  # 120 crops: 500 is dropped, the run's k 6 added
    t, model = run.circuit.target, run.model
    x = ctx.run.pool.get(np.arange(len(ctx.run.pool)))
    with torch.no_grad():
        s = model.stem(x)
        c3 = model.block3(model.block2(model.block1(s)) + s)  # [N, 16, H, W], >= 0
    logit = forward(model, x, {})[:, t].numpy()
    w = model.head.weight[t].detach().double().numpy()
    tau = 3

    def core_at(k):
        ex = np.argsort(-logit, kind="stable")[:k]  # the node's top-k crops
        imp = np.abs(w) * c3[ex].double().mean((2, 3)).mean(0).numpy()
        return set(np.argsort(-imp, kind="stable")[:tau].tolist())

    r = k_impact(ctx)
    assert (r["layer"], r["lower"], r["node"], r["tau"], r["reference_k"]) == ("head", "block3", t, tau, 6)
    assert core_at(6) == set(run.circuit.layer("head").nodes[t].core)  # the run's core set, reproduced
    assert len(ctx.run.pool) == 120 and [row["k"] for row in r["ks"]] == [1, 2, 6, 20, 120]
    want = [len(core_at(k) & core_at(6)) / tau for k in (1, 2, 6, 20, 120)]
    assert [row["overlap_with_reference"] for row in r["ks"]] == pytest.approx(want)
    assert min(want) < 1  # the core set does move with k here

    def overlap(before, after, k=6):
        return len(set(np.argsort(-before, kind="stable")[:k]) & set(np.argsort(-after, kind="stable")[:k])) / k

    def block3_response(node, zero_block2):
        with torch.no_grad():
            b = model.block2(model.block1(s)).clone()
            b[:, zero_block2] = 0
            return model.block3(b + s)[:, node].mean((1, 2)).numpy()

    res = weight_norm(ctx)
    assert not res["notes"] and [(row["layer"], row["lower"]) for row in res["nodes"]] == [
        ("head", "block3"),
        ("block3", "block2"),
    ]
    # the class node: top-|core| channels by |w_tc|, both sets masked at block3
    head_row, b3_row = res["nodes"]
    core = list(run.circuit.layer("head").nodes[t].core)
    by_norm = np.argsort(-np.abs(w), kind="stable")[: len(core)].tolist()
    assert (head_row["node"], head_row["weight"], head_row["core_size"]) == (t, "weight", len(core))
    assert head_row["set_overlap"] == pytest.approx(len(set(core) & set(by_norm)) / len(core))
    assert head_row["ig_core_topk_overlap_after_masking"] == pytest.approx(
        overlap(logit, forward(model, x, {"block3": core})[:, t].numpy())
    )
    assert head_row["weight_norm_topk_overlap_after_masking"] == pytest.approx(
        overlap(logit, forward(model, x, {"block3": by_norm})[:, t].numpy())
    )
    # the block3 node that receives the largest importance from the class node (nodes=1), its
    # 3x3 kernels' L2 norms over block2's 8 channels, both sets masked at block2 (before the skip add)
    head = run.circuit.layer("head").nodes[t]
    node = head.core[int(np.argmax(head.importance))]
    kernel = model.block3[0].weight[node].detach().double()  # [8, 3, 3]
    norms = kernel.pow(2).sum((1, 2)).sqrt().numpy()
    core = list(run.circuit.layer("block3").nodes[node].core)
    by_norm = np.argsort(-norms, kind="stable")[: len(core)].tolist()
    assert (b3_row["node"], b3_row["weight"], b3_row["core_size"]) == (node, "0.weight", len(core))
    assert b3_row["set_overlap"] == pytest.approx(len(set(core) & set(by_norm)) / len(core))
    before = block3_response(node, [])
    assert b3_row["ig_core_topk_overlap_after_masking"] == pytest.approx(overlap(before, block3_response(node, core)))
    assert b3_row["weight_norm_topk_overlap_after_masking"] == pytest.approx(
        overlap(before, block3_response(node, by_norm))
    )


def test_crop_sizes_by_hand(run):
    from neurflow.analysis.evaluate import crop_sizes

    ctx = Context(run, opts())
    r = crop_sizes(ctx)
    box = run.circuit.arrays["crop_box"]
    for layer, row in zip(run.circuit.layers, r["layers"]):
        shown = [c for n in layer.nodes.values() for s in n.sub_concepts for c in s.display_exemplars]
        assert row["share"]["16"] == pytest.approx(np.mean(box[shown, 2] == 16))


def test_checkpoint_resumes_only_with_the_same_options_run_model_and_data(tmp_path):
    ck = Checkpoint(tmp_path, "x", {"draws": 2}, "id1")
    ck.put("a", {"v": 1})
    assert Checkpoint(tmp_path, "x", {"draws": 2}, "id1").get("a") == {"v": 1}
    assert Checkpoint(tmp_path, "x", {"draws": 3}, "id1").get("a") is None
    assert Checkpoint(tmp_path, "x", {"draws": 2}, "id2").get("a") is None
    ck.done()
    assert not (tmp_path / "eval" / "x.partial.json").exists()


def test_fidelity_resumes_from_finished_units(run):
    ctx = Context(run, opts(draws=1))
    planted = {**fidelity(ctx)["layers"][0], "core_mask_accuracy": 0.123}
    ck = Checkpoint(run.dir, "fidelity", ctx.opts.key("draws", "seed"), ctx.run.identity)
    ck.put("single:block3", planted)
    r = fidelity(ctx)
    assert r["layers"][0] == planted  # the finished unit was not recomputed
    # other weights: refused before any checkpoint is read (the run's model hash)
    with torch.no_grad():
        run.model.head.bias.add_(0.01)
    with pytest.raises(NeurFlowError, match="weights differ"):
        Run(run.dir.path, quiet=True).attach(run.model)


def test_cli_contract_and_errors(tmp_path, capsys):
    from conftest import TINY_NET_PY

    (tmp_path / "m.py").write_text(TINY_NET_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.randn(10, 3, 16, 16), "labels": torch.arange(10) % 4}, tmp_path / "d.pt")
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--model",
                f"{tmp_path}/m.py:build",
                "--data",
                f"{tmp_path}/d.pt",
                "--target",
                "2",
                "--layers",
                "head,block2,block1",
                "--tau",
                "3",
                "--top-k",
                "5",
                "--ig-steps",
                "8",
                "--granularities",
                "1,0.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(out), "fidelity", "--json", "--draws", "2", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    for part in ("layers", "multi_layer"):
        assert r[part] and all(
            {
                "layer",
                "n_neurons",
                "core_mask_accuracy",
                "random_mask_accuracy",
                "core_retain_accuracy",
                "random_retain_accuracy",
            }
            <= set(row)
            for row in r[part]
        )
    assert r == {**json.loads((out / "eval" / "fidelity.json").read_text())}
    assert '"experiment":"fidelity (E1)"' in (out / "report.html").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "neurflow.cli", "eval", str(out), "fidelty"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "did you mean fidelity" in proc.stderr and "Traceback" not in proc.stderr


def test_aggregation_methods_and_overlap_arithmetic(run):
    from neurflow.analysis.evaluate.edges import aggregation, methods
    from neurflow.analysis.evaluate.fidelity import overlap

    ctx = Context(run, opts())
    e3 = edge_correlation(ctx)["nodes"][0]
    p = np.asarray(e3["points"])
    assert e3["pearson_mean"] == pytest.approx(np.corrcoef(p[:, 1] / p[:, 0], p[:, 2])[0, 1])
    e5 = aggregation(ctx)["nodes"][0]
    assert e5["pearson_sum"] == e3["pearson_sum"] and e5["pearson_mean"] == e3["pearson_mean"]
    before = model_state(run.model)
    e4 = methods(ctx)  # captum's guided backprop hooks the ReLUs: removed afterwards
    assert_same_state(before, model_state(run.model))
    rows = {row["method"]: row for row in e4["methods"]}
    assert rows["integrated_gradients"]["pearson"] == pytest.approx(e3["pearson_sum"])  # same subsets, same crops
    assert {"saliency", "gradient_shap"} <= set(rows) and all(row["seconds"] >= 0 for row in rows.values())
    try:
        import knockpy  # noqa: F401

        assert "knockoffs" in rows  # the [eval] extra is installed
    except ImportError:
        assert any("knockpy is not installed" in n for n in e4["notes"])
    e10 = overlap(ctx)
    for row in e10["layers"]:
        core = set(ctx.run.node_set(row["layer"]))
        mctset = set(mct_ranking(ctx, row["layer"], 0, np.random.RandomState(0))[: len(core)].tolist())
        assert row["neurflow_mct_overlap"] == pytest.approx(len(core & mctset) / len(core))


def test_knockoff_statistics_find_the_true_features():
    pytest.importorskip("knockpy", reason="needs the neurflow[eval] extra")
    from neurflow.analysis.evaluate.common import knockoff_statistics

    rng = np.random.RandomState(0)
    x = rng.randn(400, 20)
    x[:, 5] = 1.0  # a constant channel: W = 0
    y = 2 * x[:, 3] - 1.5 * x[:, 7] + 0.05 * rng.randn(400)
    w = knockoff_statistics(x, y, seed=0)
    assert set(np.argsort(-w)[:2]) == {3, 7} and w[5] == 0
    assert np.array_equal(w, knockoff_statistics(x, y, seed=0))  # seeded
    state = np.random.get_state()[1].copy()
    knockoff_statistics(x, y, seed=1)
    assert np.array_equal(np.random.get_state()[1], state)  # the global generator is left alone
