"""The atlas's numbers (definitions in docs/atlas.md):

* a class's **core weights** at a layer L: for the analysed layer U whose lower layer is L, each
  node n of U spreads weight 1/|N_U| over its core neurons in proportion to their importance
  (mean |IG| over the node's exemplars; uniform when a core's importances are all 0):
  ``w_c,L(j) = 1/|N_U| * sum over n in N_U with j in core(n) of imp_n(j) / sum_k in core(n) imp_n(k)``,
  so ``sum_j w_c,L(j) = 1``;
* the **similarity** of classes a and b: the weighted Jaccard ``J_L(a, b) = sum_j min(w_a,L(j),
  w_b,L(j)) / sum_j max(w_a,L(j), w_b,L(j))`` averaged over the layers L (every lower layer of
  an analysed layer: all layers but the class layer);
* the **confusion rate** ``r(a, b)``: the share of the images labelled a that the model predicts
  as b; symmetrised ``(r(a, b) + r(b, a)) / 2``;
* their **agreement**: Spearman's rho over the class pairs a < b, with a Mantel permutation
  p-value (the classes of the similarity matrix permuted, rows and columns together).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

PERMUTATIONS = 9999


def core_weights(circuit) -> dict:
    """{lower layer: {neuron: weight}} of a circuit (see the module docstring)."""
    out: dict = {}
    for layer in circuit.layers:
        w: dict = defaultdict(float)
        nodes = list(layer.nodes.values())
        for node in nodes:
            core = [int(j) for j in node.core]
            imp = [float(v) for v in node.importance][: len(core)]
            imp += [0.0] * (len(core) - len(imp))
            total = sum(imp)
            share = [v / total for v in imp] if total > 0 else [1.0 / len(core)] * len(core) if core else []
            for j, s in zip(core, share):
                w[j] += s / len(nodes)
        out[layer.lower] = dict(sorted(w.items()))
    return out


def weighted_jaccard(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    hi = sum(max(a.get(k, 0.0), b.get(k, 0.0)) for k in keys)
    lo = sum(min(a.get(k, 0.0), b.get(k, 0.0)) for k in keys)
    return lo / hi if hi > 0 else 0.0


def similarity(weights: list, layers: list) -> tuple[np.ndarray, dict]:
    """(mean similarity [n, n], {layer: [n, n]}) of the classes' core weights over ``layers``."""
    n = len(weights)
    per = {}
    for name in layers:
        m = np.eye(n)
        for i in range(n):
            for j in range(i + 1, n):
                m[i, j] = m[j, i] = weighted_jaccard(weights[i].get(name, {}), weights[j].get(name, {}))
        per[name] = m
    mean = np.mean([per[name] for name in layers], axis=0) if layers else np.eye(n)
    return mean, per


def confusion_rates(predicted, labels, classes: list) -> tuple[np.ndarray, list]:
    """(symmetrised confusion rate [n, n] among ``classes``, images labelled each class)."""
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    n = len(classes)
    rate = np.zeros((n, n))
    counts = []
    for i, a in enumerate(classes):
        mine = labels == a
        counts.append(int(mine.sum()))
        if counts[-1]:
            for j, b in enumerate(classes):
                rate[i, j] = float(np.sum(predicted[mine] == b)) / counts[-1]
    return (rate + rate.T) / 2, counts


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def spearman_mantel(sim: np.ndarray, conf: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Spearman's rho over the pairs a < b of two symmetric matrices, and its two-sided Mantel
    permutation p-value ``(1 + #{|rho_perm| >= |rho|}) / (1 + permutations)``: the classes of
    ``sim`` permuted (rows and columns together), ``conf`` fixed."""
    n = sim.shape[0]
    iu = np.triu_indices(n, 1)
    result: dict = {"spearman": None, "p_value": None, "pairs": int(len(iu[0])), "permutations": int(permutations)}
    if len(iu[0]) < 3:
        return result
    x, y = sim[iu], conf[iu]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return result
    # rank the pairs once: a permutation of the classes permutes the pairs' ranks
    rx = np.zeros((n, n))
    rx[iu] = _ranks(x)
    rx = rx + rx.T
    ry = _ranks(y)
    ry = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())

    def rho(r: np.ndarray) -> float:
        v = r[iu]
        v = v - v.mean()
        return float(v @ ry / np.linalg.norm(v))

    observed = rho(rx)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(n)
        hits += abs(rho(rx[np.ix_(p, p)])) >= abs(observed) - 1e-12
    result["spearman"] = round(observed, 6)
    result["p_value"] = round((1 + hits) / (1 + permutations), 6)
    return result


def cluster_order(sim: np.ndarray) -> list[int]:
    """The classes in the leaf order of an average-linkage clustering of ``1 - sim`` (optimal
    leaf ordering: neighbours in the order are similar)."""
    n = sim.shape[0]
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    d = np.clip(1.0 - (sim + sim.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    condensed = squareform(d, checks=False)
    z = linkage(condensed, "average")
    return [int(i) for i in leaves_list(optimal_leaf_ordering(z, condensed))]
