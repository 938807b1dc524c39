"""Integrated gradients from the lower layer's activation to upper-layer responses
(method.md section 2), batched over nodes, exemplars and quadrature steps.

For every exemplar crop the segment runs forward once per quadrature step; the gradients of all
the nodes that share this crop are then taken from that one forward pass (one backward each), and
the attribution maps are reduced to channel scores on the fly, so memory stays bounded by the
batch size whatever the number of nodes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..config import DEFAULT_IG_STEPS, DEFAULTS
from ..neurons import response, width
from .slots import IGResult, Slots, quadrature, step_batches


def integrated_gradients(
    segment: Callable,
    acts: torch.Tensor,
    extras: Sequence[torch.Tensor],
    requests: Sequence[Sequence[int]],
    steps: int = DEFAULT_IG_STEPS,
    batch_size: int = DEFAULTS.batch_size,
) -> IGResult:
    """IG of the upper responses ``requests[row]`` w.r.t. ``acts[row]`` (zero baseline; the
    extras are held at their value).  Returns the spatially averaged attributions per request."""
    slots = Slots(requests)

    def difference(rows: slice) -> torch.Tensor:
        ex = [e[rows] for e in extras]
        return response(segment(acts[rows], *ex)) - response(segment(torch.zeros_like(acts[rows]), *ex))

    deltas = slots.deltas(difference, acts.shape[0], batch_size)
    scores, totals = attributions(segment, acts, extras, slots, steps, batch_size)
    return slots.result(scores, totals, deltas)


def attributions(segment: Callable, acts, extras, slots: Slots, steps: int, batch_size: int):
    """Per slot: the channel scores [slots, C_lower] and the attribution map's sum [slots]; per
    batch of (row, step) items one forward, then one backward per round of requests."""
    alphas_t, weights_t = quadrature(steps, acts)
    scores, totals = slots.zeros(width(acts))
    for rows_np, rows, stp, base, x in step_batches(acts, slots.counts, alphas_t, batch_size):
        ex = [e[rows] for e in extras]
        with torch.enable_grad():
            r = response(segment(x, *ex))
            rounds = slots.rounds(rows_np)
            for g in range(rounds):
                have, slot = slots.round(rows_np, g)
                idx = torch.from_numpy(have).to(r.device)
                go = slots.output_grad(r, rows_np, stp, weights_t, [g])
                (grad,) = torch.autograd.grad(r, x, go, retain_graph=g < rounds - 1)
                attr = base[idx] * grad[idx]
                slot_t = torch.from_numpy(slot)
                scores.index_add_(0, slot_t, response(attr).double().cpu())
                totals.index_add_(0, slot_t, attr.flatten(1).sum(1).double().cpu())
    return scores, totals
