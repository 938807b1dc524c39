import numpy as np
import torch

from neurflow.config import NeurFlowConfig
from neurflow.method import adaptive_lengths, normalise, rank_core, top_exemplars
from neurflow.method.crops import CropPool
from neurflow.neurons import response
from neurflow.slicing import LayerGraph

from conftest import SKIP_LAYERS


def test_reference_normalisation_reproduces_published_rule():
    ref = normalise({1: 10.0, 2: 5.0}, "reference")
    assert abs(ref[1] - 10 / 15) < 1e-6 and abs(ref[2] - 5 / (10 / 15 + 5)) < 1e-6  # {0.667, 0.882}
    l1 = normalise({1: 10.0, 2: -5.0}, "l1")
    assert abs(l1[1] - 2 / 3) < 1e-12 and abs(l1[2] + 1 / 3) < 1e-12


def test_rank_core_mean_abs_and_stable_ties():
    s = np.array([[1.0, -3.0, 2.0, -2.0], [1.0, 1.0, -2.0, 2.0]])
    order, imp = rank_core(s)
    assert imp.tolist() == [1.0, 2.0, 2.0, 2.0]
    assert order.tolist() == [1, 2, 3, 0]


def test_adaptive_rule_equals_unbatched_loop(skipnet, tiny_images):
    cfg = NeurFlowConfig(top_k=5, batch_size=16)
    pool = CropPool(tiny_images, (1.0, 0.5))
    g = LayerGraph(skipnet, SKIP_LAYERS)
    crops = pool.get(range(len(pool)))
    with torch.no_grad():
        resp = response(g.recorder(["block3"])(crops)[0]).numpy()
        acts, *extras = g.prefix("block2", "block3")(crops)
    seg = g.segment("block2", "block3")
    rng = np.random.default_rng(0)
    ranked = {n: rng.permutation(8)[:4] for n in (0, 3, 9)}
    exemplars = {n: top_exemplars(resp, n, 5) for n in ranked}
    eps = 0.2
    got = adaptive_lengths(g, pool, "block3", "block2", ranked, exemplars, eps, cfg)
    for n, order in ranked.items():  # the rule, one mask at a time over the whole pool
        overlaps = []
        for r in range(1, len(order) + 1):
            mask = torch.ones(8)
            mask[torch.as_tensor(order[:r])] = 0
            with torch.no_grad():
                out = response(seg(acts * mask[None, :, None, None], *extras))[:, n]
            after = set(torch.topk(out, 5).indices.tolist())
            overlaps.append(len(after & set(exemplars[n].tolist())) / 5)
        m = min(overlaps)
        expect = next((r + 1 for r, o in enumerate(overlaps) if o < m + eps), len(overlaps))
        assert got[n] == expect
