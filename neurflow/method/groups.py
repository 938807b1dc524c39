"""Layer-wide neuron groups, group-to-group weights and the traced circuit (method.md section 3)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..circuit import Group, Layer, frozen_map
from ..config import DEFAULTS, groups_per_layer
from .clustering import silhouette_clusters

TIE_RTOL = 1e-6  # distances this close (relative to the largest) are equal: float noise, not order


def nearest_first(vectors: np.ndarray, keys: list) -> np.ndarray:
    """Positions of ``vectors`` [n, d] by distance to their mean, nearest first.  Distances equal
    up to float noise (``TIE_RTOL``) go in the order of ``keys``: two members are always at the
    same distance from their mean, and which of them a machine's rounding puts first must not
    decide the order (it did: a sub-group's neurons came out [73, 61] on one machine, [61, 73] on
    another)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    dist = np.sqrt(((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1))
    tol = TIE_RTOL * float(dist.max()) if len(dist) else 0.0
    out: list = []
    run: list = []
    for i in np.argsort(dist, kind="stable").tolist():
        if run and dist[i] - dist[run[0]] > tol:
            out += sorted(run, key=lambda j: keys[j])
            run = []
        run.append(i)
    out += sorted(run, key=lambda j: keys[j])
    return np.asarray(out, dtype=np.int64)


def layer_groups(
    keys: list,
    vectors: np.ndarray,
    max_groups: int = DEFAULTS.max_groups,
    n_groups: int | None = None,
    single: bool = False,
) -> tuple[np.ndarray, list[Group]]:
    """Cluster the (node, sub-concept) concept vectors of one layer by Ward.

    Returns the label of each key and the groups; members are ordered by distance to the group
    centre (the first ones are the group's representatives).  ``single``: one group (the class).
    """
    if single or len(keys) <= 1:
        labels = np.zeros(len(keys), dtype=np.int64)
    else:
        labels = silhouette_clusters(vectors, max_groups, fixed=n_groups)
    groups = []
    for g in range(int(labels.max()) + 1 if len(keys) else 0):
        rows = np.nonzero(labels == g)[0]
        rows = rows[nearest_first(vectors[rows], [tuple(keys[r]) for r in rows])]
        members = tuple((int(keys[r][0]), int(keys[r][1])) for r in rows)
        neurons = tuple(dict.fromkeys(m[0] for m in members))
        groups.append(Group(id=g, members=members, neurons=neurons))
    return labels, groups


def group_edges(upper: Layer, lower: Layer, rule: str = DEFAULTS.group_edge_rule) -> dict:
    """Weight from each group G of ``upper`` to each group g of ``lower``: the sum over members
    (n, s) of G and core neurons j of n of w_{n,s->j}, counted once per sub-concept of j in g
    (``published``) or once per neuron j that has a sub-concept in g (``once``)."""
    count: dict = {}
    for j, node in lower.nodes.items():
        for sc in node.sub_concepts:
            count.setdefault(j, {}).setdefault(sc.group, 0)
            count[j][sc.group] += 1
    edges = {}
    for G in upper.groups:
        row: dict = {}
        for n, s in G.members:
            sc = upper.nodes[n].sub_concepts[s]
            for j, w in sc.weights.items():
                for g, c in count.get(j, {}).items():
                    row[g] = row.get(g, 0.0) + w * (c if rule == "published" else 1)
        edges[G.id] = dict(sorted(row.items()))
    return edges


def trace(layers: list[Layer], top_n: int, rule: str = DEFAULTS.trace_rule) -> list[tuple[str, tuple]]:
    """From the class group(s) down, each layer keeps lower groups by group-edge weight from the
    groups kept above.

    ``published``: each kept upper group takes its own ``top_n`` lower groups, and the layer keeps
    their union (up to ``top_n`` x kept groups), in order of first pick.  ``sum``: the ``top_n``
    lower groups with the largest weight summed over the kept upper groups, strongest first.
    Under both rules only lower groups with an edge from a kept upper group are candidates (an
    unconnected group never outranks a connected one with negative weight); ties go to the
    smaller group id."""
    if not layers:
        return []
    kept = tuple(g.id for g in layers[0].groups)
    out = [(layers[0].name, kept)]
    for upper, lower in zip(layers, layers[1:]):
        rows = [upper.group_edges.get(G, {}) for G in kept]
        if rule == "sum":
            score: dict = {}
            for row in rows:
                for g, w in row.items():
                    score[g] = score.get(g, 0.0) + w
            kept = tuple(sorted(score, key=lambda g: (-score[g], g))[:top_n])
        else:
            picked: dict = {}
            for row in rows:
                for g in sorted(row, key=lambda g: (-row[g], g))[:top_n]:
                    picked.setdefault(g, None)
            kept = tuple(picked)
        out.append((lower.name, kept))
    return out


def assemble(
    fitted: list,
    max_groups: int,
    n_groups: int | tuple | None,
    group_edge_rule: str,
    top_n: int,
    trace_rule: str = DEFAULTS.trace_rule,
):
    """From the fitted layers (``[(Layer, {"keys", "vectors"})]``, top down): the layers with their
    groups and group edges, the concept arrays, and the trace.  ``n_groups``: one count for every
    layer below the class layer, or a tuple with one per such layer, top down."""
    counts = [None, *groups_per_layer(n_groups, max(len(fitted) - 1, 0))]
    layers, arrays = [], {}
    for i, (layer, arr) in enumerate(fitted):
        keys = [tuple(k) for k in arr["keys"]]
        labels, groups = layer_groups(keys, arr["vectors"], max_groups, counts[i], single=(i == 0))
        of = {(int(n), int(s)): int(g) for (n, s), g in zip(keys, labels)}
        nodes = {
            n: dataclasses.replace(
                node,
                sub_concepts=tuple(dataclasses.replace(sc, group=of.get((int(n), sc.id))) for sc in node.sub_concepts),
            )
            for n, node in layer.nodes.items()
        }
        layers.append(dataclasses.replace(layer, nodes=frozen_map(nodes), groups=tuple(groups)))
        arrays[f"concept_keys/{layer.name}"] = arr["keys"]
        arrays[f"concept_vectors/{layer.name}"] = arr["vectors"]
    for i in range(len(layers) - 1):
        layers[i] = dataclasses.replace(
            layers[i], group_edges=frozen_map(group_edges(layers[i], layers[i + 1], group_edge_rule))
        )
    return layers, arrays, trace(layers, top_n, trace_rule)
