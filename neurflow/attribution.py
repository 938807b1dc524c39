"""Integrated gradients from the lower layer's activation to upper-layer responses
(method.md section 2), batched over nodes, exemplars and quadrature steps.

For every exemplar crop the segment runs forward once per quadrature step; the gradients of all
the nodes that share this crop are then taken from that one forward pass (one backward each), and
the attribution maps are reduced to channel scores on the fly, so memory stays bounded by the
batch size whatever the number of nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .probe import response, width


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1]: captum's ``gausslegendre`` rule."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (1.0 + x), 0.5 * w


@dataclass
class IGResult:
    scores: list  # per crop row: [len(requests[row]), C_lower] channel scores (spatial mean)
    totals: list  # per crop row: [len(requests[row])] sum of the attribution map
    deltas: list  # per crop row: [len(requests[row])] h(A) - h(0)

    def gaps(self) -> np.ndarray:
        """Completeness gap per (row, request): sum of attributions - (h(A) - h(0))."""
        if not self.totals:
            return np.zeros(0)
        return np.concatenate([t - d for t, d in zip(self.totals, self.deltas)])


def step_batches(acts: torch.Tensor, counts: np.ndarray, alphas_t: torch.Tensor, batch_size: int):
    """The (row, step) items of IG in batches: rows with requests, sorted by their number of
    requests (a batch is then homogeneous), every step of a row in a row.  Yields (rows as numpy,
    rows, steps, the rows' activations, the scaled inputs alpha * A with gradients on)."""
    steps = len(alphas_t)
    order = [r for r in np.argsort(-counts, kind="stable") if counts[r]]
    item_row = np.repeat(np.asarray(order, dtype=np.int64), steps)
    item_step = np.tile(np.arange(steps), len(order))
    for start in range(0, len(item_row), batch_size):
        rows_np = item_row[start : start + batch_size]
        rows = torch.from_numpy(rows_np).to(acts.device)
        stp = torch.from_numpy(item_step[start : start + batch_size]).to(acts.device)
        base = acts[rows]
        shape = (-1,) + (1,) * (base.ndim - 1)
        yield rows_np, rows, stp, base, (alphas_t[stp].view(shape) * base).detach().requires_grad_(True)


def integrated_gradients(
    segment: Callable,
    acts: torch.Tensor,
    extras: Sequence[torch.Tensor],
    requests: Sequence[Sequence[int]],
    steps: int = 50,
    batch_size: int = 64,
) -> IGResult:
    """IG of the upper responses ``requests[row]`` w.r.t. ``acts[row]`` (zero baseline; the
    extras are held at their value).  Returns the spatially averaged attributions per request."""
    n_rows = acts.shape[0]
    alphas, weights = gauss_legendre(steps)
    alphas_t = torch.as_tensor(alphas, dtype=acts.dtype, device=acts.device)
    weights_t = torch.as_tensor(weights, dtype=acts.dtype, device=acts.device)
    c_low = width(acts)
    counts = np.asarray([len(r) for r in requests], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])  # (row, g) -> flat slot offsets[row] + g
    chan_of_slot = np.asarray([c for r in requests for c in r], dtype=np.int64)
    n_slots = int(offsets[-1])
    scores = torch.zeros(n_slots, c_low, dtype=torch.float64)
    totals = torch.zeros(n_slots, dtype=torch.float64)
    deltas = np.zeros(n_slots)

    # h(A) and h(0) for the completeness gap
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            sl = slice(start, start + batch_size)
            ex = [e[sl] for e in extras]
            h = response(segment(acts[sl], *ex)) - response(segment(torch.zeros_like(acts[sl]), *ex))
            diff = h.double().cpu().numpy()
            for i in range(diff.shape[0]):
                row = start + i
                deltas[offsets[row] : offsets[row + 1]] = diff[i, requests[row]]

    for rows_np, rows, stp, base, x in step_batches(acts, counts, alphas_t, batch_size):
        ex = [e[rows] for e in extras]
        with torch.enable_grad():
            r = response(segment(x, *ex))
            item_counts = counts[rows_np]
            for g in range(int(item_counts.max())):
                have = np.nonzero(item_counts > g)[0]
                slot = offsets[rows_np[have]] + g
                idx = torch.from_numpy(have).to(r.device)
                go = torch.zeros_like(r)
                go[idx, torch.from_numpy(chan_of_slot[slot]).to(r.device)] = weights_t[stp[idx]].to(go.dtype)
                (grad,) = torch.autograd.grad(r, x, go, retain_graph=g < int(item_counts.max()) - 1)
                attr = base[idx] * grad[idx]
                slot_t = torch.from_numpy(slot)
                scores.index_add_(0, slot_t, response(attr).double().cpu())
                totals.index_add_(0, slot_t, attr.flatten(1).sum(1).double().cpu())
    split = lambda a: [a[offsets[i] : offsets[i + 1]] for i in range(n_rows)]  # noqa: E731
    return IGResult(split(scores.numpy()), split(totals.numpy()), split(deltas))
