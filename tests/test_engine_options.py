"""--ig-steps auto, --ig-tol and --precision: what they choose and what they record."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

import neurflow
from neurflow._state import precision, preserved
from neurflow.attribution import integrated_gradients
from neurflow.config import AUTO_SAMPLE_PAIRS, IG_ORDERS, NeurFlowConfig
from neurflow.errors import NeurFlowError
from neurflow.method import core_neurons as core
from neurflow.method.crops import CropPool
from neurflow.slicing import LayerGraph

from conftest import SKIP_LAYERS, majority_class

SETTINGS = dict(tau=3, top_k=6, granularities=(1.0, 0.5), batch_size=16)


def test_auto_steps_pick_the_smallest_order_under_the_tolerance(skipnet, tiny_images):
    target = majority_class(skipnet, tiny_images)
    runs = {}
    for tol in (0.5, 1e-3):
        nf = neurflow.NeurFlow(ig_steps="auto", ig_tol=tol, **SETTINGS)
        runs[tol] = nf.fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS).circuit_
    loose = [int(l.completeness_gap["ig_steps"]) for l in runs[0.5].layers]
    tight = [int(l.completeness_gap["ig_steps"]) for l in runs[1e-3].layers]
    assert all(o in IG_ORDERS for o in loose + tight)
    assert all(a <= b for a, b in zip(loose, tight)) and loose != tight  # a tighter tolerance needs more steps
    for layer in runs[1e-3].layers:  # the whole layer's gap is of the sample's size too
        assert layer.completeness_gap["relative"] < 1e-3 * 5
    # the run with the chosen orders equals fixed-step runs at those orders, layer by layer
    for layer, order in zip(runs[1e-3].layers[:1], tight[:1]):
        fixed = neurflow.NeurFlow(ig_steps=order, **SETTINGS).fit(
            skipnet, tiny_images, target=target, layers=SKIP_LAYERS
        )
        ref = fixed.circuit_.layers[0]
        assert {n: v.core for n, v in ref.nodes.items()} == {n: v.core for n, v in layer.nodes.items()}
        for n in ref.nodes:
            np.testing.assert_allclose(layer.nodes[n].importance, ref.nodes[n].importance, rtol=1e-9)


def _exemplars(counts: dict[int, int]) -> dict[int, np.ndarray]:
    """Exemplars in which crop ``c`` is an exemplar of nodes ``0 .. counts[c] - 1`` (block3 has 16)."""
    return {n: np.asarray([c for c, k in counts.items() if n < k]) for n in range(max(counts.values()))}


# (crop: how many nodes use it) -> the crops --ig-steps auto measures, written out by hand for
# AUTO_SAMPLE_PAIRS = 64: the busiest crops (ties: the lower index) until 64 pairs are reached
SAMPLES = {
    "64 pairs exactly: the fifth crop is left out": ({4: 16, 1: 16, 9: 16, 2: 16, 7: 16}, [1, 2, 4, 7]),
    "the crop that crosses 64 is in": ({5: 16, 2: 14, 8: 12, 0: 10, 7: 10, 1: 6, 3: 4}, [0, 1, 2, 5, 7, 8]),
    "63 pairs: one more crop, the lower index": ({0: 16, 3: 16, 5: 16, 6: 15, 8: 1, 2: 1}, [0, 2, 3, 5, 6]),
    "fewer than 64 pairs: every crop": ({3: 16, 6: 8, 0: 2}, [0, 3, 6]),
}


@pytest.mark.parametrize("counts, want", SAMPLES.values(), ids=SAMPLES.keys())
def test_choose_steps_measures_the_busiest_crops_up_to_the_pair_budget(skipnet, tiny_images, counts, want, monkeypatch):
    assert AUTO_SAMPLE_PAIRS == 64  # the cases above are written for it
    cfg = NeurFlowConfig(ig_steps="auto", ig_tol=0.5, **SETTINGS)
    graph = LayerGraph(skipnet, SKIP_LAYERS)
    pool = CropPool(tiny_images, cfg.granularities, cfg.stride_ratio)
    assert len(pool) > max(counts)
    exemplars = _exemplars(counts)
    fetched, measured = [], []
    get = CropPool.get
    monkeypatch.setattr(CropPool, "get", lambda self, idx: fetched.extend(int(i) for i in idx) or get(self, idx))
    run_ig = core.run_ig
    monkeypatch.setattr(core, "run_ig", lambda *a: measured.append(a[4]) or run_ig(*a))
    core.choose_steps(graph, pool, "block3", "block2", exemplars, cfg)
    assert fetched == want  # the crops whose lower activations are computed, and only those
    assert measured and all(reqs == [list(range(counts[c])) for c in want] for reqs in measured)


def test_choose_steps_picks_the_first_order_under_the_tolerance(skipnet, tiny_images):
    # brute force: every order's relative gap, dense IG on the whole sample (8 crops of 8 nodes: the
    # budget of 64 pairs is reached at the last crop, so the sample is all of it)
    cfg = NeurFlowConfig(ig_steps="auto", **SETTINGS)
    graph = LayerGraph(skipnet, SKIP_LAYERS)
    pool = CropPool(tiny_images, cfg.granularities, cfg.stride_ratio)
    exemplars = _exemplars({c: 8 for c in range(8)})
    crops, requests = np.arange(8), [list(range(8))] * 8
    with preserved(skipnet, freeze=True), torch.no_grad():
        acts, *extras = graph.prefix("block2", "block3")(pool.get(crops))
    seg = graph.segment("block2", "block3")
    gaps = {}
    for order in IG_ORDERS:
        with preserved(skipnet, freeze=True):
            res = integrated_gradients(seg, acts, extras, requests, order)
        gaps[order] = float(np.abs(res.gaps()).sum() / np.abs(np.concatenate(res.deltas)).sum())
    assert 1 > gaps[IG_ORDERS[0]] > gaps[IG_ORDERS[-1]] > 0, gaps  # the rule has something to choose
    # each order whose gap is clearly below every smaller order's: a tolerance between the two selects it
    checked = []
    for i, order in enumerate(IG_ORDERS):
        smaller = min((gaps[o] for o in IG_ORDERS[:i]), default=1.0)
        if gaps[order] < 0.9 * smaller:
            tol = (gaps[order] + smaller) / 2
            got = core.choose_steps(graph, pool, "block3", "block2", exemplars, dataclasses.replace(cfg, ig_tol=tol))
            assert got == order, (order, tol, gaps)
            checked.append(order)
    assert len(checked) >= 4, gaps
    # and none reaching it: the largest order
    tiny = dataclasses.replace(cfg, ig_tol=min(gaps.values()) / 2)
    assert core.choose_steps(graph, pool, "block3", "block2", exemplars, tiny) == IG_ORDERS[-1]


def test_auto_steps_warn_when_no_order_reaches_the_tolerance(skipnet, tiny_images, caplog):
    target = majority_class(skipnet, tiny_images)
    with caplog.at_level(logging.WARNING, logger="neurflow.method.core_neurons"):
        c = (
            neurflow.NeurFlow(ig_steps="auto", ig_tol=1e-15, **SETTINGS)
            .fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS[:3])
            .circuit_
        )
    assert c.layers[0].completeness_gap["ig_steps"] == IG_ORDERS[-1]
    assert "no order up to 100" in caplog.text


def test_steps_settings_validate_and_enter_the_identity():
    assert NeurFlowConfig(ig_steps="auto").method_dict()["ig_tol"] == 1e-3
    assert "ig_tol" not in NeurFlowConfig().method_dict()  # only read by auto
    assert "precision" not in NeurFlowConfig().method_dict()  # fp32: runs from before keep their identity
    assert NeurFlowConfig(precision="bf16").method_dict()["precision"] == "bf16"
    for bad in (dict(ig_steps="many"), dict(ig_steps=0), dict(ig_tol=0), dict(ig_tol=2), dict(precision="fp8")):
        with pytest.raises(NeurFlowError):
            NeurFlowConfig(**bad)


def test_cli_parses_auto_and_refuses_other_words(tmp_path, capsys):
    from neurflow.cli import build_parser, main

    base = ["run", "--model", "m", "--data", "d", "--target", "0", "--out", "o"]
    args = build_parser().parse_args([*base, "--layers", "a,b",
                                      "--ig-steps", "auto", "--ig-tol", "1e-4", "--precision", "bf16"])  # fmt: skip
    assert (args.ig_steps, args.ig_tol, args.precision) == ("auto", 1e-4, "bf16")
    assert build_parser().parse_args([*base, "--ig-steps", "12"]).ig_steps == 12
    with pytest.raises(SystemExit) as e:
        main([*base, "--ig-steps", "lots"])
    assert e.value.code == 2


def test_precision_contexts_restore_the_global_switches():
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    with precision("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    after = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    assert after == before
    with precision("bf16"):
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.bfloat16 and not torch.is_autocast_enabled("cpu")
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default: cuDNN convolutions in TF32 on Ampere and later
    try:
        with precision("fp32"):  # exact: TF32 off for matmuls and convolutions alike
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3)).dtype == torch.float32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = before[1]


@pytest.mark.parametrize("mode", ["bf16", "tf32"])
def test_faster_precision_reports_its_agreement_with_fp32(skipnet, tiny_images, mode):
    target = majority_class(skipnet, tiny_images)
    fast = (
        neurflow.NeurFlow(ig_steps=8, precision=mode, **SETTINGS)
        .fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS)
        .circuit_
    )
    exact = neurflow.NeurFlow(ig_steps=8, **SETTINGS).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS)
    agreement = fast.meta["precision_agreement"]
    assert list(agreement) == [l.name for l in fast.layers]
    for layer, ref in zip(fast.layers, exact.circuit_.layers):
        facts = agreement[layer.name]
        checked = sorted(layer.nodes)[: int(facts["nodes_checked"])]
        assert facts["nodes_checked"] == min(8, len(layer.nodes))
        # recount the agreement from the two runs' ordered core sets (same nodes: the layers above agree)
        if set(layer.nodes) == set(ref.nodes):
            same = np.mean([layer.nodes[n].core == ref.nodes[n].core for n in checked])
            assert facts["identical_ordered"] == pytest.approx(same)
        assert 0 <= facts["mean_jaccard"] <= 1
    if mode == "tf32":  # no TF32 units on a CPU: the numbers are fp32's
        assert all(f["identical_ordered"] == 1.0 for f in agreement.values())
    assert "precision_agreement" not in exact.circuit_.meta
    assert dataclasses.asdict(fast.config)["precision"] == mode if hasattr(fast, "config") else True


@pytest.mark.parametrize("engine", ["auto", "dense"])
def test_adaptive_rule_from_kept_maps_equals_recomputing_them(skipnet, tiny_images, monkeypatch, engine):
    """The activations pass keeps the lower layers' maps for the adaptive rule when they fit the
    budget; the circuit is the one that recomputes them per layer (budget 0)."""
    import neurflow.method.estimator as pipeline

    target = majority_class(skipnet, tiny_images)
    settings = dict(ig_steps=8, adaptive_eps=0.1, engine=engine, **SETTINGS)
    calls = []
    from neurflow.slicing import LayerGraph as LG

    real = LG.prefix

    def counting(self, lower, upper):
        calls.append((lower, upper))
        return real(self, lower, upper)

    monkeypatch.setattr(LG, "prefix", counting)
    kept = neurflow.NeurFlow(**settings).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS).circuit_
    with_kept = list(calls)
    calls.clear()
    monkeypatch.setattr(pipeline, "KEEP_MAPS_BYTES", 0)
    again = neurflow.NeurFlow(**settings).fit(skipnet, tiny_images, target=target, layers=SKIP_LAYERS).circuit_
    assert len(calls) > len(with_kept)  # without the kept maps, the adaptive passes run the prefixes again
    for a, b in zip(kept.layers, again.layers):
        assert {n: v.core for n, v in a.nodes.items()} == {n: v.core for n, v in b.nodes.items()}


def test_engine_auto_is_channel_sparse_on_the_cpu_and_dense_on_a_gpu(skipnet):
    """The device is only read, not used: the choice is testable without a GPU."""
    from neurflow.attribution import sparse_plan
    from neurflow.config import NeurFlowConfig
    from neurflow.slicing import LayerGraph

    graph = LayerGraph(skipnet, SKIP_LAYERS)
    upper, lower = SKIP_LAYERS[1], SKIP_LAYERS[2]
    segment = graph.segment(lower, upper)
    assert sparse_plan(graph, segment, NeurFlowConfig()) is not None
    assert sparse_plan(graph, segment, NeurFlowConfig(device="cuda")) is None
    assert sparse_plan(graph, segment, NeurFlowConfig(device="cuda:1")) is None
    assert sparse_plan(graph, segment, NeurFlowConfig(engine="dense")) is None
