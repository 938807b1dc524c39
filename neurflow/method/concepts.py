"""Sub-concepts of one node: Ward clustering of its exemplars' lower responses, each with its own
edge weights to the node's core neurons (method.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..circuit import Node, SubConcept, frozen_map
from ..config import NeurFlowConfig
from .clustering import silhouette_clusters

N_DISPLAY = 5


def normalise(raw: dict, rule: str) -> dict:
    """Edge weights: L1 over the core set, or the published in-place rule (``reference``)."""
    if rule == "l1":
        total = sum(abs(v) for v in raw.values())
        return {j: (v / total if total > 0 else 0.0) for j, v in raw.items()}
    out = dict(raw)
    for j in out:  # each later denominator already holds the normalised earlier values
        out[j] = out[j] / (sum(abs(v) for v in out.values()) + 1e-7)
    return out


@dataclass
class NodeFit:
    node: Node
    vectors: np.ndarray  # concept vectors [n_sub, C_lower]


def fit_node(
    n: int,
    s: np.ndarray,
    ex: np.ndarray,
    core: np.ndarray,
    imp: np.ndarray,
    resp_up: np.ndarray,
    resp_low: np.ndarray,
    cfg: NeurFlowConfig,
) -> NodeFit:
    """Sub-concepts of node ``n``: Ward + silhouette on the exemplars' lower responses."""
    x = resp_low[ex]
    labels = silhouette_clusters(x, cfg.max_sub_concepts, cfg.monosemantic_threshold)
    subs, vectors = [], []
    for lab in range(int(labels.max()) + 1):
        members = np.nonzero(labels == lab)[0]
        sub_x = x[members][:, core]
        centre = sub_x.mean(axis=0)
        dist = np.sqrt(((sub_x - centre) ** 2).sum(axis=1))
        nearest = set(members[np.argsort(dist, kind="stable")[:N_DISPLAY]].tolist())
        display = tuple(int(ex[i]) for i in range(len(ex)) if i in nearest)
        raw = {int(j): float(s[members, j].mean()) for j in core}
        subs.append(
            SubConcept(
                id=lab,
                exemplars=tuple(int(ex[i]) for i in members),
                display_exemplars=display,
                activation=float(resp_up[ex[members], n].astype(np.float64).mean()),
                weights=frozen_map(normalise(raw, cfg.edge_norm)),
                raw_weights=frozen_map(raw),
            )
        )
        vectors.append(x[members].astype(np.float64).mean(axis=0))
    node = Node(
        index=int(n),
        core=tuple(int(j) for j in core),
        sub_concepts=tuple(subs),
        exemplars=tuple(int(c) for c in ex),
        importance=tuple(float(imp[j]) for j in core),
    )
    return NodeFit(node, np.stack(vectors))
