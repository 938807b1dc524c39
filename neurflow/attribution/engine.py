"""Which IG engine runs a segment: the channel-sparse kernels where the plan applies (``--engine
auto`` on the CPU), the dense path otherwise.
"""

from __future__ import annotations

import torch

from .._state import precision
from ..config import NeurFlowConfig
from ..slicing import LayerGraph
from .dense import integrated_gradients
from .plan import plan_segment
from .sparse import integrated_gradients_sparse


def sparse_plan(graph: LayerGraph, segment, cfg: NeurFlowConfig):
    """The channel-sparse plan of ``segment`` under ``engine`` auto on the CPU, else None (dense).
    On a GPU the dense path's large batched kernels are faster than the sparse path's many small
    ones (an H200: 3.2x on ResNet50's top six layer pairs, docs/performance.md), so auto means dense there."""
    if cfg.engine != "auto" or torch.device(cfg.device).type != "cpu":
        return None
    return plan_segment(segment, graph.leaf_modules)


def run_ig(sparse, segment, acts, extras, reqs, steps: int, cfg: NeurFlowConfig):
    """IG through the channel-sparse plan where it fits, else dense; (result, the plan still usable)."""
    with precision(cfg.precision, cfg.device):
        res = integrated_gradients_sparse(sparse, acts, extras, reqs, steps, cfg.batch_size) if sparse else None
        if res is None:
            sparse = None  # shapes the plan does not cover: dense from here on
            res = integrated_gradients(segment, acts, extras, reqs, steps=steps, batch_size=cfg.batch_size)
    return res, sparse
