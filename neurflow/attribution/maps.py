"""The pieces of a segment's linear maps that the channel-sparse kernels (``attribution.sparse``)
use: a map's bias, its transpose restricted to single output channels or whole, hooks that make
the maps' outputs leaves of the autograd graph, and the channel-wise tail run on a subset of its
channels.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as torch_grad


class Capture:
    """Forward hooks on the tail's source maps that make their outputs leaves (the tail's
    gradient is read there) and keep their inputs (for the backward through what precedes them)."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.us: list = [None] * len(modules)
        self.zs: list = [None] * len(modules)

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def _hook(self, i: int):
        def hook(module, args, out):
            self.us[i] = args[0]
            self.zs[i] = out.detach().requires_grad_(True)
            return self.zs[i]

        return hook

    @property
    def z(self):
        return self.zs[0]

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


Map = nn.Conv2d | nn.Linear  # the maps a plan transposes


def bias_of(last: Map, z: torch.Tensor) -> torch.Tensor:
    """L's bias shaped to broadcast over its output ``z`` (zero without a bias)."""
    if last.bias is None:
        return torch.zeros((), dtype=z.dtype, device=z.device)
    return last.bias.detach().to(z.dtype).view(1, -1, *([1] * (z.ndim - 2)))


def transpose_channels(last: Map, g: torch.Tensor, chans: torch.Tensor, input_shape) -> torch.Tensor:
    """For each row i: the gradient at L's input of ``g[i]`` (a gradient at L's output channel
    ``chans[i]``, [H', W'] or a scalar), through L restricted to that channel: [rows, *input_shape]."""
    w = last.weight[chans].to(g.dtype)
    if isinstance(last, nn.Linear):
        return g.reshape(-1, 1) * w
    rows = g.shape[0]
    kh, kw = w.shape[-2:]
    (dh, dw), (ph, pw) = last.dilation, tuple(map(int, last.padding))  # plain maps: numeric padding
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    if tuple(last.stride) == (1, 1) and min(qh, qw) >= 0:
        # stride 1: the transposed map is a correlation of the zero-padded gradient with the flipped
        # kernel: one batched matmul over the gradient's patches (far faster than a grouped conv)
        patches = F.unfold(g.reshape(rows, 1, *g.shape[-2:]), (kh, kw), (dh, dw), (qh, qw))  # [rows, kh kw, HW]
        if patches.shape[-1] == input_shape[1] * input_shape[2]:
            return torch.bmm(w.flip(-1, -2).reshape(rows, w.shape[1], kh * kw), patches).view(rows, *input_shape)
    return torch_grad.conv2d_input(
        (1, rows * input_shape[0], *input_shape[1:]), w, g.reshape(1, rows, *g.shape[-2:]),
        last.stride, last.padding, last.dilation, groups=rows,
    ).view(rows, *input_shape)  # fmt: skip


def transpose_full(m: Map, g: torch.Tensor, input_shape) -> torch.Tensor:
    """The gradient at a map's input of ``g`` (a gradient at its whole output), [rows, *input_shape]."""
    w = m.weight.to(g.dtype)
    if isinstance(m, nn.Linear):
        return g @ w
    return torch_grad.conv2d_input((g.shape[0], *input_shape), w, g, m.stride, m.padding, m.dilation, m.groups)


class SubTail(fx.Interpreter):
    """The channel-wise tail evaluated on a subset of its channels: BatchNorm's statistics and
    affine parameters, and any held tensor with the full channel count, are sliced to them."""

    def __init__(self, tail: fx.GraphModule, width: int):
        super().__init__(tail)
        self.width = width
        self.ch = torch.zeros(0, dtype=torch.long)
        self.first = True

    def sub(self, z: torch.Tensor, ch: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        self.ch, self.first = ch, True
        return self.run(z, *extras)

    def _slice(self, v):
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[1] == self.width:
            return v[:, self.ch]
        return v

    def placeholder(self, target, args, kwargs):
        v = super().placeholder(target, args, kwargs)
        if self.first:  # z: already the channel subset
            self.first = False
            return v
        return self._slice(v)

    def get_attr(self, target, args, kwargs):
        v = super().get_attr(target, args, kwargs)
        if isinstance(v, torch.Tensor) and v.ndim == 1 and v.shape[0] == self.width:
            return v[self.ch]
        return self._slice(v)

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training:
            ch = self.ch

            def pick(t):
                return None if t is None else t[ch]

            return F.batch_norm(args[0], pick(m.running_mean), pick(m.running_var), pick(m.weight), pick(m.bias),
                                False, 0.0, m.eps)  # fmt: skip
        return super().call_module(target, args, kwargs)
