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

from .layers import response


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1]: captum's ``gausslegendre`` rule."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (1.0 + x), 0.5 * w


@dataclass
class IGResult:
    scores: list            # per crop row: [len(requests[row]), C_lower] channel scores (spatial mean)
    totals: list            # per crop row: [len(requests[row])] sum of the attribution map
    deltas: list            # per crop row: [len(requests[row])] h(A) - h(0)

    def gaps(self) -> np.ndarray:
        """Completeness gap per (row, request): sum of attributions - (h(A) - h(0))."""
        if not self.totals:
            return np.zeros(0)
        return np.concatenate([t - d for t, d in zip(self.totals, self.deltas)])


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
    c_low = acts.shape[-1] if acts.ndim == 3 else acts.shape[1]
    scores = [torch.zeros(len(r), c_low, dtype=torch.float64) for r in requests]
    totals = [torch.zeros(len(r), dtype=torch.float64) for r in requests]
    deltas = [np.zeros(len(r)) for r in requests]

    # h(A) and h(0) for the completeness gap
    with torch.no_grad():
        for start in range(0, n_rows, batch_size):
            sl = slice(start, start + batch_size)
            ex = [e[sl] for e in extras]
            full = response(segment(acts[sl], *ex)).double().cpu()
            zero = response(segment(torch.zeros_like(acts[sl]), *ex)).double().cpu()
            for i in range(full.shape[0]):
                req = list(requests[start + i])
                deltas[start + i] = (full[i, req] - zero[i, req]).numpy()

    # items = (row, step); rows sorted by their number of requests so a sub-batch is homogeneous
    order = sorted(range(n_rows), key=lambda r: -len(requests[r]))
    order = [r for r in order if len(requests[r])]
    item_row = np.repeat(np.asarray(order, dtype=np.int64), steps)
    item_step = np.tile(np.arange(steps), len(order))
    for start in range(0, len(item_row), batch_size):
        rows = torch.from_numpy(item_row[start:start + batch_size]).to(acts.device)
        stp = torch.from_numpy(item_step[start:start + batch_size]).to(acts.device)
        base = acts[rows]
        shape = (-1,) + (1,) * (base.ndim - 1)
        x = (alphas_t[stp].view(shape) * base).detach().requires_grad_(True)
        ex = [e[rows] for e in extras]
        with torch.enable_grad():
            r = response(segment(x, *ex))
            rows_np = rows.cpu().numpy()
            n_slots = max(len(requests[row]) for row in rows_np)
            for g in range(n_slots):
                have = [i for i, row in enumerate(rows_np) if len(requests[row]) > g]
                go = torch.zeros_like(r)
                idx = torch.as_tensor(have, device=r.device)
                chans = torch.as_tensor([requests[rows_np[i]][g] for i in have], device=r.device)
                go[idx, chans] = weights_t[stp[idx]]
                (grad,) = torch.autograd.grad(r, x, go, retain_graph=g < n_slots - 1)
                attr = base * grad
                contrib = response(attr).double().cpu()
                tot = attr.flatten(1).sum(1).double().cpu()
                for i in have:
                    row = rows_np[i]
                    scores[row][g] += contrib[i]
                    totals[row][g] += tot[i]
    return IGResult([s.numpy() for s in scores], [t.numpy() for t in totals], deltas)
