"""The bookkeeping every integrated-gradients kernel shares (dense and channel-sparse): the
Gauss-Legendre rule, the *slots* - one per (crop row, requested node), where each kernel's
attributions go - the (crop row, step) batches, the weighted one-hot output gradients and the
result.  The kernels state only their own math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1]: captum's ``gausslegendre`` rule."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (1.0 + x), 0.5 * w


def quadrature(steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gauss-Legendre (alphas, weights) as tensors of ``like``'s dtype and device."""
    alphas, weights = gauss_legendre(steps)
    return (
        torch.as_tensor(alphas, dtype=like.dtype, device=like.device),
        torch.as_tensor(weights, dtype=like.dtype, device=like.device),
    )


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


class Slots:
    """One slot per (crop row, requested node), rows in order: row ``r``'s requests
    ``requests[r]`` hold the slots ``offsets[r] .. offsets[r + 1] - 1``, slot ``s`` reads the
    upper channel ``channel[s]``.  A batch of (row, step) items asks for its rows' requests in
    *rounds*: round ``g`` is every item's ``g``-th request."""

    def __init__(self, requests: Sequence[Sequence[int]]):
        self.requests = requests
        self.counts = np.asarray([len(r) for r in requests], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.channel = np.asarray([c for r in requests for c in r], dtype=np.int64)
        self.n = int(self.offsets[-1])

    def of_row(self, row: int) -> slice:
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def rounds(self, rows_np: np.ndarray) -> int:
        """How many rounds the items of rows ``rows_np`` need: their largest request count."""
        return int(self.counts[rows_np].max())

    def round(self, rows_np: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the items that have a ``g``-th request, their slots)."""
        have = np.nonzero(self.counts[rows_np] > g)[0]
        return have, self.offsets[rows_np[have]] + g

    def output_grad(self, r: torch.Tensor, rows_np, stp, weights_t, rounds: Sequence[int]) -> torch.Tensor:
        """The gradient to back-propagate from the responses ``r`` [items, C_upper]: for every
        round of ``rounds``, each item's requested channel weighted by its step's quadrature weight."""
        go = torch.zeros_like(r)
        for g in rounds:
            have, slot = self.round(rows_np, g)
            idx = torch.from_numpy(have).to(r.device)
            go[idx, torch.from_numpy(self.channel[slot]).to(r.device)] = weights_t[stp[idx]].to(go.dtype)
        return go

    def deltas(self, difference: Callable[[slice], torch.Tensor], n_rows: int, batch_size: int) -> np.ndarray:
        """h(A) - h(0) per slot, for the completeness gap: ``difference(rows)`` gives it for a
        batch of rows as [rows, C_upper] (run without gradients)."""
        deltas = np.zeros(self.n)
        with torch.no_grad():
            for start in range(0, n_rows, batch_size):
                diff = difference(slice(start, start + batch_size)).double().cpu().numpy()
                for i in range(diff.shape[0]):
                    deltas[self.of_row(start + i)] = diff[i, list(self.requests[start + i])]
        return deltas

    def zeros(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty (scores [slots, width], totals [slots]) in float64 on the CPU."""
        return torch.zeros(self.n, width, dtype=torch.float64), torch.zeros(self.n, dtype=torch.float64)

    def result(self, scores: torch.Tensor, totals: torch.Tensor, deltas: np.ndarray) -> IGResult:
        """The kernels' per-slot numbers as an ``IGResult`` (lists per crop row)."""
        rows = range(len(self.counts))

        def split(a):
            return [a[self.offsets[i] : self.offsets[i + 1]] for i in rows]

        return IGResult(split(scores.numpy()), split(totals.numpy()), split(deltas))
