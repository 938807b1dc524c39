"""Ward clustering with the silhouette rule (method.md sections 2.4 and 3).

One linkage tree serves every cluster count.  ``cut`` assigns labels exactly as scikit-learn's
``AgglomerativeClustering(linkage="ward")`` does for the same tree, so the sub-concept and group
numbering matches the published code's.
"""

from __future__ import annotations

import heapq

import numpy as np
from sklearn.cluster import ward_tree
from sklearn.metrics import silhouette_score


def linkage_tree(x: np.ndarray) -> np.ndarray:
    """Children of the Ward merge tree (sklearn layout: row i merges into node n_leaves + i)."""
    children, _, n_leaves, _ = ward_tree(x)
    return np.asarray(children)


def cut(children: np.ndarray, n_leaves: int, n_clusters: int) -> np.ndarray:
    """Labels of the ``n_clusters``-cut of the tree, numbered as scikit-learn numbers them."""
    if n_clusters <= 1 or n_leaves <= 1:
        return np.zeros(n_leaves, dtype=np.int64)
    nodes = [-(int(children[-1].max()) + 1)]
    for _ in range(n_clusters - 1):
        these = children[-nodes[0] - n_leaves]
        heapq.heappush(nodes, -int(these[0]))
        heapq.heappushpop(nodes, -int(these[1]))
    labels = np.zeros(n_leaves, dtype=np.int64)
    for i, node in enumerate(nodes):
        labels[_leaves(-node, children, n_leaves)] = i
    return labels


def _leaves(node: int, children: np.ndarray, n_leaves: int) -> list[int]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n < n_leaves:
            out.append(n)
        else:
            stack.extend(int(c) for c in children[n - n_leaves])
    return out


def silhouette_clusters(
    x: np.ndarray, max_clusters: int, allow_one_below: float | None = None, fixed: int | None = None
) -> np.ndarray:
    """Ward labels with the count chosen by the silhouette argmax over 2..min(n - 1, max)
    (ties to the smaller count; 2 when that range is empty, as published).  With
    ``allow_one_below`` set, one cluster is returned when no split reaches that silhouette."""
    n = x.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    children = linkage_tree(x)
    if fixed is not None:
        return cut(children, n, min(fixed, n))
    top = min(n - 1, max_clusters)
    best_k: int = 2
    best: float | None = None
    if top <= 2:
        if allow_one_below is not None and n > 2:
            best = silhouette_score(x, cut(children, n, 2))
    else:
        best = -1.0
        for k in range(2, top + 1):
            score = float(silhouette_score(x, cut(children, n, k)))
            if score > best:
                best, best_k = score, k
    if allow_one_below is not None and best is not None and best < allow_one_below:
        return np.zeros(n, dtype=np.int64)
    return cut(children, n, best_k)
