"""Channel-sparse integrated gradients: the same numbers as ``attribution.integrated_gradients``
at a fraction of the cost, on segments whose last stage is channel-wise.

A node is one output channel of the segment.  When the segment ends in a convolution or linear
map ``L`` followed only by channel-wise operations (BatchNorm, element-wise activations, pooling,
dropout, adding a tensor that does not depend on the input), channel ``n`` of the output depends
only on channel ``n`` of ``z = L(u)``.  Then, for every quadrature step:

* one backward pass of the *sum* of all requested node responses through the channel-wise tail
  gives every node's gradient ``dz_n`` at once (channel ``n`` of the tail gradient is node ``n``'s);
* a node's gradient at ``L``'s input is the transposed map of ``L`` restricted to its one output
  channel (``W[n]``), a ``1 / C_out`` share of a dense backward.

When ``L``'s input is the segment input itself (``u = alpha x``: single-conv segments such as
VGG / AlexNet / the zoo CNN blocks), the transposed map is linear, so the weighted sum over the
quadrature steps is taken *before* it: one small transposed convolution per (node, crop) instead
of one dense backward per (node, crop, step).  Otherwise (``L`` after other layers, e.g. a
residual block's second convolution, or a head after pooling) each node still needs a backward
through the part before ``L``, but not through ``L`` and the tail.

The segment is flattened with torch.fx (standard layers as leaves, as ``torch.fx`` does by
default, plus the user's ``leaf_modules``) to find ``L`` and check the tail; anything else falls
back to the dense path.  Both are tested against captum and against each other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..config import DEFAULT_IG_STEPS, DEFAULTS
from ..neurons import response, width
from .maps import Capture, SubTail, bias_of, transpose_channels, transpose_full
from .plan import SparsePlan
from .slots import IGResult, Slots, quadrature, step_batches


def integrated_gradients_sparse(
    p: SparsePlan,
    acts: torch.Tensor,
    extras: Sequence[torch.Tensor],
    requests: Sequence[Sequence[int]],
    steps: int = DEFAULT_IG_STEPS,
    batch_size: int = DEFAULTS.batch_size,
) -> IGResult | None:
    """``attribution.integrated_gradients`` computed channel-sparsely with the plan ``p``; None
    when the shapes met at run time do not fit the plan (the caller then uses the dense path)."""
    if not fits(p, acts, extras):
        return None
    slots = Slots(requests)
    tail = p.tail() if p.direct else None

    def difference(rows: slice) -> torch.Tensor:  # h(A) - h(0)
        ex = [e[rows] for e in extras]
        if tail is not None:  # direct: L(0) is L's bias
            z = p.last(acts[rows])
            return response(tail(z, *ex)) - response(tail(bias_of(p.last, z).expand_as(z).contiguous(), *ex))
        return response(p.module(acts[rows], *ex)) - response(p.module(torch.zeros_like(acts[rows]), *ex))

    deltas = slots.deltas(difference, acts.shape[0], batch_size)
    kernel = _direct if p.direct else _linear_front if p.linear_front else _through_prefix
    scores, totals = kernel(p, acts, extras, slots, steps, batch_size)
    return slots.result(scores, totals, deltas)


def _direct(p: SparsePlan, acts, extras, slots: Slots, steps: int, batch_size: int):
    """A direct plan: L(alpha x) = alpha (L(x) - b) + b, so one L per crop serves every step; the
    tail runs on the channels the crop's nodes need only; the weighted sum over the steps of the
    tail gradient goes through L transposed once per (node, crop)."""
    requests = slots.requests
    scores, totals = slots.zeros(width(acts))
    tail = SubTail(p.tail(), int(p.last.weight.shape[0]))
    with torch.no_grad():
        zfull = p.last(acts)
        bias = bias_of(p.last, zfull)
        zlin = zfull - bias
    a_t, w_t = quadrature(steps, zlin)
    rows_all = [r for r in range(acts.shape[0]) if len(requests[r])]
    per = max(1, batch_size // steps)
    for c0 in range(0, len(rows_all), per):
        rows = rows_all[c0 : c0 + per]
        ch_np = np.unique(np.concatenate([np.asarray(requests[r], dtype=np.int64) for r in rows]))
        ch = torch.from_numpy(ch_np).to(zlin.device)
        pos = {int(c): i for i, c in enumerate(ch_np)}
        want = torch.zeros(len(rows), len(ch_np), dtype=zlin.dtype, device=zlin.device)
        for i, row in enumerate(rows):
            want[i, [pos[int(c)] for c in requests[row]]] = 1
        rows_t = torch.as_tensor(rows, device=zlin.device)
        sub_b = bias[:, ch] if bias.ndim else bias
        lin = zlin[rows_t][:, ch]  # [nr, |ch|, ...]
        z = (a_t.view(1, -1, *([1] * (lin.ndim - 1))) * lin.unsqueeze(1)).flatten(0, 1) + sub_b
        z.requires_grad_(True)
        ex = [e[rows_t].repeat_interleave(steps, 0) for e in extras]
        with torch.enable_grad():
            r = response(tail.sub(z, ch, *ex))  # [nr * steps, |ch|]
            go = (want.unsqueeze(1) * w_t.view(1, -1, 1)).flatten(0, 1)
            (dz,) = torch.autograd.grad(r, z, go.to(r.dtype))
        gsum = dz.double().view(len(rows), steps, *dz.shape[1:]).sum(1)  # [nr, |ch|, ...]
        for i, row in enumerate(rows):
            idx = torch.as_tensor([pos[int(c)] for c in requests[row]], device=gsum.device)
            chans = torch.as_tensor(list(requests[row]), device=gsum.device)
            grad = transpose_channels(p.last, gsum[i, idx], chans, tuple(acts.shape[1:]))
            attr = acts[row].double().unsqueeze(0) * grad
            scores[slots.of_row(row)] = response(attr).cpu()
            totals[slots.of_row(row)] = attr.flatten(1).sum(1).cpu()
    return scores, totals


def _through_prefix(p: SparsePlan, acts, extras, slots: Slots, steps: int, batch_size: int):
    """A plan with several sources or a map after other layers: per step one forward and one
    backward of all nodes through the tail; then per node each map transposed on its one channel
    (at the input directly, or followed by a backward through the layers before it) and, for an
    identity shortcut, the node's own channel of the tail gradient at the input."""
    alphas_t, weights_t = quadrature(steps, acts)
    scores, totals = slots.zeros(width(acts))
    maps = [(m, direct) for m, direct in p.sources if m is not None]
    identity = any(m is None for m, _ in p.sources)
    with Capture(*[m for m, _ in maps]) as cap:
        for rows_np, rows, stp, base, x in step_batches(acts, slots.counts, alphas_t, batch_size):
            ex = [e[rows] for e in extras]
            rounds = slots.rounds(rows_np)
            with torch.enable_grad():
                r = response(p.module(x, *ex))
                go = slots.output_grad(r, rows_np, stp, weights_t, range(rounds))  # all rounds at once
                wrt = list(cap.zs) + ([x] if identity else [])
                pre = [(i, cap.us[i]) for i, (_, direct) in enumerate(maps) if not direct]
                # the tail's backward may pass through values the layers before a map share with it
                tail_grads = torch.autograd.grad(r, wrt, go, allow_unused=True, retain_graph=bool(pre))
                for g in range(rounds):
                    have, slot = slots.round(rows_np, g)
                    grad = _prefix_round(maps, pre, identity, tail_grads, x, base, have,
                                         slots.channel[slot], retain=g < rounds - 1)  # fmt: skip
                    attr = base[torch.from_numpy(have).to(x.device)] * grad
                    slot_t = torch.from_numpy(slot)
                    scores.index_add_(0, slot_t, response(attr).double().cpu())
                    totals.index_add_(0, slot_t, attr.flatten(1).sum(1).double().cpu())
    return scores, totals


def _prefix_round(maps, pre, identity: bool, tail_grads, x, base, have, channels, retain: bool) -> torch.Tensor:
    """The gradient at the segment input of one round's items (positions ``have``, their node
    ``channels``): the direct maps transposed on the node's channel, the maps after other layers
    transposed then back through those layers, and an identity shortcut's own channel."""
    idx = torch.from_numpy(have).to(x.device)
    chans = torch.from_numpy(channels).to(x.device)
    grad = torch.zeros_like(base[idx])
    for i, (m, direct) in enumerate(maps):
        dz = tail_grads[i]
        if dz is None or not direct:
            continue
        grad += transpose_channels(m, dz[idx, chans], chans, tuple(base.shape[1:])).to(grad.dtype)
    if pre:
        dus = []
        for i, u in pre:
            du = torch.zeros_like(u)
            if tail_grads[i] is not None:
                du[idx] = transpose_channels(maps[i][0], tail_grads[i][idx, chans], chans, tuple(u.shape[1:])).to(
                    du.dtype
                )
            dus.append(du)
        back = torch.autograd.grad([u for _, u in pre], x, dus, retain_graph=retain)[0]
        grad += back[idx]
    if identity and tail_grads[-1] is not None:
        ar = torch.arange(len(have), device=x.device)
        grad[ar, chans] += tail_grads[-1][idx, chans]
    return grad


def _linear_front(p: SparsePlan, acts, extras, slots: Slots, steps: int, batch_size: int):
    """A plan whose input reaches the tail only through linear maps (``SparsePlan.linear_front``).

    The maps that read the input are evaluated once per crop (their outputs along the path are
    scaled copies); per step one forward of the rest, one backward of all nodes through the tail
    and, per node, the backward from the non-direct sources to the front maps' outputs.  The
    weighted sums over the steps of the gradients at the front maps' and direct sources' outputs
    (and at the input, for an identity shortcut) then go through the transposed maps once per
    (node, crop) instead of once per step (``_StepSums``)."""
    alphas_t, weights_t = quadrature(steps, acts)
    body, firsts = p.body()
    pre = [m for m, direct in p.sources if m is not None and not direct]  # maps after other layers
    sums = _StepSums(acts, slots, steps, firsts, len(p.front), any(m is None for m, _ in p.sources))
    with Capture(*pre) as cap:
        for rows_np, rows, stp, _, x in step_batches(acts, slots.counts, alphas_t, batch_size):
            ex = [e[rows] for e in extras]
            rounds = slots.rounds(rows_np)
            uniq, inv = np.unique(rows_np, return_inverse=True)
            outs = _scaled_first_outputs(firsts, acts, uniq, inv, alphas_t[stp])
            with torch.enable_grad():
                r = response(body(x, *outs, *ex))
                go = slots.output_grad(r, rows_np, stp, weights_t, range(rounds))  # all rounds at once
                wrt = list(cap.zs) + outs[sums.n_front :] + ([x] if sums.identity else [])
                tail_grads = torch.autograd.grad(r, wrt, go, allow_unused=True)
                pre_grads, later = tail_grads[: len(pre)], tail_grads[len(pre) :]
                for g in range(rounds):
                    have, slot = slots.round(rows_np, g)
                    idx = torch.from_numpy(have).to(x.device)
                    chans = torch.from_numpy(slots.channel[slot]).to(x.device)
                    got = _front_grads(pre, cap.us, pre_grads, outs, sums.n_front, idx, chans, g < rounds - 1)
                    for k, dz in enumerate(later):
                        ref = outs[sums.n_front + k] if k < len(later) - sums.identity else x
                        got.append(torch.zeros_like(ref[idx, 0]) if dz is None else dz[idx, chans])
                    sums.add(slot.tolist(), got)
            sums.steps_done(rows_np, uniq)
    return sums.finished()


def _scaled_first_outputs(firsts, acts, uniq, inv, alphas) -> list:
    """The outputs of the maps that read the input along the IG path, one per (row, step) item:
    alpha (m(x) - b) + b from one evaluation per row (leaves of the autograd graph)."""
    inv_t = torch.from_numpy(inv).to(acts.device)
    outs = []
    with torch.no_grad():
        for m in firsts:
            z = m(acts[torch.from_numpy(uniq).to(acts.device)])
            bias = bias_of(m, z)
            a = alphas.view(-1, *([1] * (z.ndim - 1)))
            outs.append((a * (z - bias)[inv_t] + bias).requires_grad_(True))
    return outs


def _front_grads(pre, us, pre_grads, outs, n_front: int, idx, chans, retain: bool) -> list:
    """One round's gradients at the front maps' outputs: each map after other layers transposed on
    the node's channel, then back through the layers before it to the front maps' outputs."""
    if not n_front:
        return []
    dus = []
    for i, u in enumerate(us):
        du = torch.zeros_like(u)
        if pre_grads[i] is not None:
            du[idx] = transpose_channels(pre[i], pre_grads[i][idx, chans], chans, tuple(u.shape[1:])).to(du.dtype)
        dus.append(du)
    back = torch.autograd.grad(list(us), outs[:n_front], dus, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(f[idx]) if b is None else b[idx] for f, b in zip(outs, back)]


class _StepSums:
    """Per slot, the sums over the quadrature steps of the gradients at the first maps' outputs
    (and at the input, for an identity shortcut); a row whose steps are all in goes through the
    transposed maps once (``finish``) and its sums are dropped."""

    def __init__(self, acts, slots: Slots, steps: int, firsts, n_front: int, identity: bool):
        self.acts, self.slots, self.steps, self.firsts = acts, slots, steps, firsts
        self.n_front, self.identity = n_front, identity
        self.acc: dict[int, list] = {}  # slot -> the step sums: [per first map..., identity]
        self.seen = np.zeros(len(slots.counts), dtype=np.int64)
        self.scores, self.totals = slots.zeros(width(acts))

    def add(self, slots: list, got: list) -> None:
        for j, s in enumerate(slots):
            if s in self.acc:
                for total, v in zip(self.acc[s], got):
                    total += v[j]
            else:
                self.acc[s] = [v[j].double() for v in got]

    def steps_done(self, rows_np, uniq) -> None:
        np.add.at(self.seen, rows_np, 1)
        for row in uniq:
            if self.seen[row] == self.steps:
                self.finish(int(row))

    def finish(self, row: int) -> None:
        acts, shape = self.acts, tuple(self.acts.shape[1:])
        sl = np.arange(self.slots.offsets[row], self.slots.offsets[row + 1])
        chans = torch.as_tensor(self.slots.channel[sl], device=acts.device)
        parts = [torch.stack([self.acc[int(s)][k] for s in sl]) for k in range(len(self.firsts) + self.identity)]
        grad = torch.zeros((len(sl), *shape), dtype=torch.float64, device=acts.device)
        for k, m in enumerate(self.firsts):
            grad += (
                transpose_full(m, parts[k], shape)
                if k < self.n_front
                else transpose_channels(m, parts[k], chans, shape)
            )
        if self.identity:
            grad[torch.arange(len(sl), device=acts.device), chans] += parts[-1]
        attr = acts[row].double().unsqueeze(0) * grad
        self.scores[sl] = response(attr).cpu()
        self.totals[sl] = attr.flatten(1).sum(1).cpu()
        for s in sl:
            del self.acc[int(s)]

    def finished(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert not self.acc, "a row's steps did not all arrive"
        return self.scores, self.totals


def fits(p: SparsePlan, acts: torch.Tensor, extras: Sequence[torch.Tensor]) -> bool:
    """Whether L's output is [B, C, H, W] (conv) or [B, C] (linear) and the segment's output
    keeps its channels (one example through the segment)."""
    given = [acts, *extras]
    if any(i >= 0 and given[i].ndim == 4 for i in p.layout):
        return False  # a channels-last lower layer: its layout step was dropped from the plan
    with Capture(p.last) as cap, torch.no_grad():
        out = p.module(acts[:1], *[e[:1] for e in extras])
    z = cap.z
    if z is None or not isinstance(out, torch.Tensor):
        return False
    if -1 in p.layout and out.ndim == 4:
        return False  # a channels-last upper layer: its layout step was dropped from the plan
    want = 2 if isinstance(p.last, nn.Linear) else 4
    return z.ndim == want and out.ndim in (2, 4) and out.shape[1] == z.shape[1]


def masked_prefix_responses(
    p: SparsePlan,
    acts: torch.Tensor,
    extras: Sequence[torch.Tensor],
    ranked: Sequence[tuple[int, Sequence[int]]],
    tail: fx.GraphModule,
) -> torch.Tensor:
    """The adaptive rule's masked responses, channel-sparsely (direct plans only): for every
    (node n, ranked channels j_1..j_t) of ``ranked`` and r = 1..t, node n's response with the
    channels j_1..j_r of ``acts`` zeroed: [sum of t, B].

    L is linear, so L(acts with j_1..j_r zeroed)_n = L(acts)_n - sum_{i <= r} (j_i's part of it):
    one grouped 1-in-1-out map per (node, channel) and a running sum give every prefix mask at
    once; only the channel-wise tail runs per mask."""
    assert p.direct
    last = p.last
    b = acts.shape[0]
    with torch.no_grad():
        z = last(acts)
        nodes = torch.as_tensor([n for n, js in ranked for _ in js], device=acts.device)
        chans = torch.as_tensor([int(j) for _, js in ranked for j in js], device=acts.device)
        w = last.weight[nodes, chans]  # [P, kh, kw] or [P]
        if isinstance(last, nn.Conv2d):
            parts = F.conv2d(acts[:, chans], w.unsqueeze(1), None, last.stride, last.padding, last.dilation,
                             groups=len(chans))  # fmt: skip
        else:
            parts = acts[:, chans] * w
        ends = np.cumsum([len(js) for _, js in ranked])
        starts = np.concatenate([[0], ends[:-1]])
        cum = torch.cat([parts[:, s:e].cumsum(1) for s, e in zip(starts, ends)], 1)  # [B, P, ...]
        masked = z[:, nodes] - cum  # L's output channel n with the prefix mask, [B, P, ...]
        # the tail is channel-wise, so one pass evaluates one mask per channel: round r puts every
        # node's r-th prefix mask into its own channel (max t passes instead of sum of t)
        out = torch.empty(len(chans), b, dtype=z.dtype, device=z.device)
        pos = [(i, r) for i, (_, js) in enumerate(ranked) for r in range(len(js))]
        for r in range(max(len(js) for _, js in ranked)):
            pairs = [k for k, (_, rr) in enumerate(pos) if rr == r]
            ks = torch.as_tensor(pairs, device=z.device)
            zz = z.clone()
            zz[:, nodes[ks]] = masked[:, ks]
            resp = response(tail(zz, *extras))
            out[ks] = resp[:, nodes[ks]].transpose(0, 1)
    return out
