"""The layer loop of the top-down pass: every analysed layer, top down, from the class neuron to
the input layer.  At each pair (upper, lower) the nodes' exemplars, integrated gradients, the core
neurons (fixed tau or the adaptive rule) and the sub-concepts (method.md sections 2-3); a run
saved in a ``RunStore`` resumes from the layers it finished."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from ..circuit import Layer, frozen_map, gap_warnings
from ..config import PRECISION_CHECK_NODES, NeurFlowConfig
from ..slicing import LayerGraph
from ..store import RunStore
from .concepts import fit_node
from .core_neurons import adaptive_lengths, attribute, ig_steps, rank_core, top_exemplars
from .crops import CropPool

log = logging.getLogger(__name__)


def fit_layers(
    cfg: NeurFlowConfig,
    graph: LayerGraph,
    pool: CropPool,
    resp: dict,
    layers: list,
    target: int,
    store: RunStore | None,
    quiet: bool,
    maps: dict,
) -> list[tuple[Layer, dict]]:
    """Every analysed layer top down, resumed from ``store`` and saved there as each finishes:
    [(Layer, its arrays: sub-concept keys and concept vectors)].  ``maps``: the lower layers' full
    outputs on the pool, kept by the activations pass for the adaptive rule (emptied as it goes)."""
    fitted: list[tuple[Layer, dict]] = list(store.load_layers()) if store is not None else []
    nodes = next_nodes(fitted[-1][0]) if fitted else [target]
    for i in range(len(fitted), len(layers) - 1):
        t = time.perf_counter()
        layer, arrays = fit_layer(cfg, graph, pool, resp, layers[i], layers[i + 1], nodes, quiet, maps)
        layer = dataclasses.replace(layer, seconds=round(time.perf_counter() - t, 3))
        fitted.append((layer, arrays))
        if store is not None:
            store.save_layer(layer, arrays)
        nodes = next_nodes(layer)
    return fitted


def fit_layer(cfg, graph, pool, resp, upper, lower, nodes, quiet, maps) -> tuple[Layer, dict]:
    """One layer pair: exemplars, IG, core neurons, the layer's facts, then each node's sub-concepts."""
    r_up, r_low = resp[upper], resp[lower]
    exemplars = {n: top_exemplars(r_up, n, cfg.top_k) for n in nodes}
    steps = ig_steps(graph, pool, upper, lower, exemplars, cfg)
    scores, gaps = attribute(graph, pool, upper, lower, exemplars, cfg, steps, quiet)
    ranked, imps = {}, {}
    for n in nodes:
        order, imp = rank_core(scores[n])
        ranked[n], imps[n] = order[: min(cfg.tau, len(order))], imp
    facts = gap_facts(gaps)
    zero = [n for n in nodes if not np.any(imps[n])]  # no attribution at all: the core is tie order
    facts["zero_attribution_nodes"] = float(len(zero))
    warn_completeness(upper, lower, facts, zero)
    if cfg.ig_steps == "auto":
        facts["ig_steps"] = float(steps)
    if cfg.precision != "fp32":
        facts.update(precision_check(cfg, graph, pool, upper, lower, exemplars, ranked, steps))
    if cfg.adaptive_eps is not None:
        kept = maps.pop(lower, None)  # used once: freed as the pass goes down
        lengths = adaptive_lengths(graph, pool, upper, lower, ranked, exemplars, cfg.adaptive_eps, cfg, quiet, kept)
        ranked = {n: ranked[n][: lengths[n]] for n in nodes}
    out_nodes, keys, vectors = {}, [], []
    for n in nodes:
        fit = fit_node(n, scores[n], exemplars[n], ranked[n], imps[n], r_up, r_low, cfg)
        out_nodes[n] = fit.node
        for sc, v in zip(fit.node.sub_concepts, fit.vectors):
            keys.append((n, sc.id))
            vectors.append(v)
    layer = Layer(name=upper, lower=lower, nodes=frozen_map(out_nodes), completeness_gap=frozen_map(facts))
    return layer, {"keys": np.asarray(keys, dtype=np.int64).reshape(-1, 2), "vectors": np.stack(vectors)}


def precision_check(cfg, graph, pool, upper, lower, exemplars, ranked, steps) -> dict:
    """A faster ``precision``'s agreement with fp32 at one layer: the core sets of up to
    ``PRECISION_CHECK_NODES`` nodes recomputed in fp32 (the run's facts, per layer)."""
    sample = sorted(ranked)[:PRECISION_CHECK_NODES]
    exact = dataclasses.replace(cfg, precision="fp32")
    scores, _ = attribute(graph, pool, upper, lower, {n: exemplars[n] for n in sample}, exact, steps)
    same_order = same_set = 0
    jaccard = []
    for n in sample:
        ref = rank_core(scores[n])[0][: len(ranked[n])]
        same_order += int(np.array_equal(ref, ranked[n]))
        a, b = set(ref.tolist()), set(ranked[n].tolist())
        same_set += int(a == b)
        jaccard.append(len(a & b) / max(1, len(a | b)))
    m = max(1, len(sample))
    return {
        "precision_nodes_checked": float(len(sample)),
        "precision_identical_ordered": same_order / m,
        "precision_identical_sets": same_set / m,
        "precision_mean_jaccard": float(np.mean(jaccard)) if jaccard else 1.0,
    }


def gap_facts(gaps: np.ndarray) -> dict:
    """The layer's completeness-gap statistics (absolute and relative to |h(A) - h(0)|)."""
    gap = {
        "mean_abs": float(gaps[:, 0].mean()) if len(gaps) else 0.0,
        "max_abs": float(gaps[:, 0].max()) if len(gaps) else 0.0,
        "mean_abs_delta": float(gaps[:, 1].mean()) if len(gaps) else 0.0,
    }
    gap["relative"] = gap["mean_abs"] / gap["mean_abs_delta"] if gap["mean_abs_delta"] > 0 else 0.0
    return gap


def warn_completeness(upper: str, lower: str, facts: dict, zero: list) -> None:
    """A warning per problem of a finished layer: a relative completeness gap above the threshold,
    and the nodes whose attributions are all zero (named, the first 20)."""
    for text in gap_warnings(facts):
        log.warning("layer %s (attributions to %s): %s", upper, lower, text)
    if zero:
        names = ", ".join(map(str, zero[:20])) + (f", ... ({len(zero)} in all)" if len(zero) > 20 else "")
        log.warning("layer %s: all-zero attributions at node(s) %s", upper, names)


def next_nodes(layer: Layer) -> list[int]:
    """The next layer's nodes: the union of this layer's core neurons, ascending."""
    return sorted({j for node in layer.nodes.values() for j in node.core})
