"""The core neurons of a layer pair (method.md section 2): each node's exemplars, the order of
integrated gradients (``--ig-steps auto``), the attribution, the ranking of the lower channels and
the adaptive eps rule's core lengths.  The sub-concepts are ``concepts``."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from .._state import preserved
from ..attribution import fits, masked_prefix_responses, run_ig, sparse_plan
from ..config import AUTO_SAMPLE_PAIRS, IG_ORDERS, NeurFlowConfig
from ..errors import NeurFlowError
from ..neurons import masks_for
from ..progress import progress
from ..slicing import LayerGraph
from .crops import CropPool
from .probe import layer_width, lower_batches, masked_responses

log = logging.getLogger(__name__)


def top_exemplars(resp: np.ndarray, node: int, k: int) -> np.ndarray:
    """The node's top-k crops by response, best first (torch.topk order, as published)."""
    if resp.shape[0] < k:
        raise NeurFlowError(
            "top_k", f"at most the number of crops ({resp.shape[0]})", k, "lower {p:top_k} or give more class images"
        )
    return torch.topk(torch.from_numpy(resp[:, node]), k).indices.numpy()


def _requests(exemplars: dict) -> tuple[np.ndarray, list[list[int]]]:
    """The crops the nodes' exemplars use, and per crop the nodes that need its attribution."""
    crops = np.unique(np.concatenate(list(exemplars.values())))
    where = {int(c): i for i, c in enumerate(crops)}
    requests: list[list[int]] = [[] for _ in crops]
    for n, ex in exemplars.items():
        for c in ex:
            requests[where[int(c)]].append(n)
    return crops, requests


def choose_steps(graph: LayerGraph, pool: CropPool, upper: str, lower: str, exemplars: dict, cfg) -> int:
    """``--ig-steps auto``: the smallest order of ``IG_ORDERS`` whose relative completeness gap
    (sum |gap| / sum |h(A) - h(0)|) on a sample of the layer's (node, crop) pairs is below
    ``ig_tol``; the largest order when none is."""
    crops, requests = _requests(exemplars)
    take, pairs = [], 0
    for i in np.argsort(-np.asarray([len(r) for r in requests]), kind="stable"):  # the busiest crops first
        if pairs >= AUTO_SAMPLE_PAIRS:
            break
        take.append(int(i))
        pairs += len(requests[i])
    take = sorted(take)
    with preserved(graph.model, freeze=True):
        prefix, segment = graph.cut(lower, upper, cfg.norm_rule)
        sparse = sparse_plan(graph, segment, cfg)
        with torch.no_grad():  # the sample's lower activations, in batches of batch_size
            parts = [prefix(pool.get(crops[take[i : i + cfg.batch_size]]).to(cfg.device))
                     for i in range(0, len(take), cfg.batch_size)]  # fmt: skip
            acts, *extras = [torch.cat(vals) for vals in zip(*parts)]
        graph.check_gradient(lower, upper, segment, acts, extras)  # a cut the graph does not show: one line
        reqs = [requests[i] for i in take]
        exact = dataclasses.replace(cfg, precision="fp32")  # the gap measured without bf16's noise floor
        for order in IG_ORDERS:
            res, sparse = run_ig(sparse, segment, acts, extras, reqs, order, exact)
            denom = float(np.abs(np.concatenate(res.deltas)).sum())
            rel = float(np.abs(res.gaps()).sum()) / denom if denom > 0 else 0.0
            log.debug("ig steps %d at %s: relative completeness gap %.2e", order, upper, rel)
            if rel < cfg.ig_tol:
                return order
    log.warning("ig_steps auto: no order up to %d reaches a relative gap of %g at %s", IG_ORDERS[-1], cfg.ig_tol, upper)
    return IG_ORDERS[-1]


def ig_steps(graph: LayerGraph, pool: CropPool, upper: str, lower: str, exemplars: dict, cfg) -> int:
    """The Gauss-Legendre order of a layer pair: ``cfg.ig_steps``, or under ``auto`` the order
    ``choose_steps`` measures on the layer's exemplars (the one place that decides)."""
    return choose_steps(graph, pool, upper, lower, exemplars, cfg) if cfg.ig_steps == "auto" else int(cfg.ig_steps)


def attribute(
    graph: LayerGraph,
    pool: CropPool,
    upper: str,
    lower: str,
    exemplars: dict,
    cfg: NeurFlowConfig,
    steps: int,
    quiet: bool = True,
) -> tuple[dict, np.ndarray]:
    """IG matrix S_n [k, C_lower] for every node, and the completeness gaps.  ``steps``: the
    Gauss-Legendre order (``ig_steps``)."""
    crops, requests = _requests(exemplars)
    with preserved(graph.model, freeze=True):  # gradients w.r.t. activations only; flags restored
        prefix, segment = graph.cut(lower, upper, cfg.norm_rule)
        sparse = sparse_plan(graph, segment, cfg)
        log.debug("IG %s <- %s: %s path", upper, lower, "channel-sparse" if sparse else "dense")
        gaps, per_crop = [], {}
        chunk = max(1, cfg.batch_size)
        bar = progress(total=len(crops), desc=f"IG {upper}", quiet=quiet, unit="crop")
        for start in range(0, len(crops), chunk):
            idx = crops[start : start + chunk]
            with torch.no_grad():
                acts, *extras = prefix(pool.get(idx).to(cfg.device))
            if start == 0:  # a gradient cut the graph does not show (torch.no_grad() in a module): one line
                graph.check_gradient(lower, upper, segment, acts, extras)
            reqs = requests[start : start + chunk]
            res, sparse = run_ig(sparse, segment, acts, extras, reqs, steps, cfg)
            for i, c in enumerate(idx):
                per_crop[int(c)] = dict(zip(requests[start + i], res.scores[i]))
            rel = np.abs(res.gaps())
            denom = np.abs(np.concatenate(res.deltas)) if res.deltas else np.zeros(0)
            gaps.append(np.stack([rel, denom], axis=1) if len(rel) else np.zeros((0, 2)))
            bar.update(len(idx))
        bar.close()
    scores = {n: np.stack([per_crop[int(c)][n] for c in ex]) for n, ex in exemplars.items()}
    return scores, np.concatenate(gaps) if gaps else np.zeros((0, 2))


def rank_core(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower channels ranked by mean |IG| over the exemplars (stable on ties), and the means."""
    imp = np.abs(s).mean(axis=0)
    order = np.argsort(-imp, kind="stable")
    return order, imp


def adaptive_lengths(
    graph: LayerGraph,
    pool: CropPool,
    upper: str,
    lower: str,
    ranked: dict,
    exemplars: dict,
    eps: float,
    cfg: NeurFlowConfig,
    quiet: bool = True,
    kept: torch.Tensor | None = None,
) -> dict:
    """The adaptive eps rule, all (node, r) masks batched over the pool: returns node -> r.
    ``kept``: the lower layer's full outputs on the pool, when the activations pass kept them."""
    nodes = list(ranked)
    pairs = [(n, r) for n in nodes for r in range(1, len(ranked[n]) + 1)]
    if not pairs:
        return {}
    k = len(next(iter(exemplars.values())))
    sparse = sparse_plan(graph, graph.segment(lower, upper), cfg)
    out = _prefix_masked_sparse(sparse, graph, pool, upper, lower, ranked, cfg, quiet, kept) if sparse else None
    if out is None:
        c_low = layer_width(graph, pool, lower, cfg.device)
        masks = masks_for([ranked[n][:r] for n, r in pairs], c_low, cfg.device)
        out = masked_responses(graph, pool, upper, lower, [n for n, _ in pairs], masks, None, cfg.batch_size,
                               cfg.device, quiet, desc=f"adaptive tau {upper}", kept=kept)  # fmt: skip
    lengths, i = {}, 0
    for n in nodes:
        top = set(int(c) for c in exemplars[n])
        overlaps = []
        for _ in ranked[n]:
            after = torch.topk(torch.from_numpy(out[i]), k).indices.numpy()
            overlaps.append(len(top.intersection(int(c) for c in after)) / k)
            i += 1
        limit = min(overlaps) + eps
        lengths[n] = next((r + 1 for r, o in enumerate(overlaps) if o < limit), len(overlaps))
    return lengths


def _prefix_masked_sparse(sparse, graph, pool, upper, lower, ranked, cfg, quiet, kept=None) -> np.ndarray | None:
    """The adaptive rule's masked responses through ``sparse.masked_prefix_responses`` (a direct
    channel-sparse plan), [pairs, pool]; None where the plan does not apply."""
    if not sparse.direct:
        return None
    tail = sparse.tail()
    ranked_list = [(n, [int(j) for j in ranked[n]]) for n in ranked]
    out = np.zeros((sum(len(js) for _, js in ranked_list), len(pool)), dtype=np.float32)
    bar = progress(total=len(pool), desc=f"adaptive tau {upper}", quiet=quiet, unit="crop")
    with preserved(graph.model), torch.no_grad():
        for idx, (acts, *extras) in lower_batches(graph, pool, lower, upper, cfg.batch_size, cfg.device, None, kept):
            if not fits(sparse, acts, extras):
                bar.close()
                return None
            resp = masked_prefix_responses(sparse, acts, extras, ranked_list, tail)
            out[:, idx] = resp.float().cpu().numpy()
            bar.update(len(idx))
    bar.close()
    return out
