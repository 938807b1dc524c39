import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import silhouette_score

from neurflow.method.clustering import cut, linkage_tree, silhouette_clusters


@pytest.mark.parametrize("seed", range(5))
def test_cut_labels_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 40))
    x = rng.normal(size=(n, 6)).astype(np.float32)
    children = linkage_tree(x)
    for k in range(1, min(n, 9)):
        ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(x).labels_
        assert (cut(children, n, k) == ref).all()


@pytest.mark.parametrize("seed", range(5))
def test_silhouette_rule_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 1.0, size=(8, 4)) for c in rng.normal(0, 4, size=(3, 4))]).astype(np.float32)
    best, best_k = -1, None
    for k in range(2, 6):
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(x).labels_
        s = silhouette_score(x, labels)
        if s > best:
            best, best_k = s, k
    ref = AgglomerativeClustering(n_clusters=best_k, linkage="ward").fit(x).labels_
    assert (silhouette_clusters(x, 5) == ref).all()


def test_small_counts_and_monosemantic_option():
    x = np.array([[0.0], [0.1], [0.2]], dtype=np.float32)
    assert silhouette_clusters(x[:1], 5).tolist() == [0]
    assert sorted(set(silhouette_clusters(x[:2], 5).tolist())) == [0, 1]  # never one cluster by default
    assert len(set(silhouette_clusters(x, 5).tolist())) == 2
    # one blob: no split reaches a high silhouette -> one sub-concept when allowed
    blob = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    assert len(set(silhouette_clusters(blob, 5).tolist())) >= 2
    assert set(silhouette_clusters(blob, 5, allow_one_below=0.9).tolist()) == {0}
