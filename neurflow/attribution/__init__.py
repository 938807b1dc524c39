"""Integrated gradients from a lower layer's activation to upper-layer responses (method.md
section 2): the dense path (``dense``), the channel-sparse plan of a segment (``plan``) and its
kernels (``sparse``, with the linear maps' pieces in ``maps``), the bookkeeping they share
(``slots``) and the choice between them (``engine``).  Both paths are tested against captum and
against each other."""

from .dense import integrated_gradients
from .engine import run_ig, sparse_plan
from .plan import SparsePlan, plan_segment
from .slots import IGResult, gauss_legendre, step_batches
from .sparse import fits, integrated_gradients_sparse, masked_prefix_responses

__all__ = [
    "IGResult",
    "SparsePlan",
    "fits",
    "gauss_legendre",
    "integrated_gradients",
    "integrated_gradients_sparse",
    "masked_prefix_responses",
    "plan_segment",
    "run_ig",
    "sparse_plan",
    "step_batches",
]
