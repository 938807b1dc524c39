"""The one table of torch operations that slicing and the channel-sparse planner read: views,
element-wise and channel-wise operations, the modules and functions that say where a 4-D
value's channels lie, and the operations that cut the gradient.  Also the graph walks.
"""

from __future__ import annotations

import operator
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

CUT_METHODS = {"detach": ".detach()", "numpy": ".numpy()", "tolist": ".tolist()", "item": ".item()"}


def cut_of(n: fx.Node) -> str | None:
    """What in ``n`` stops the gradient (``.detach()``, ``.data``, ...), or None."""
    if n.op == "call_method" and n.target in CUT_METHODS:
        return CUT_METHODS[n.target]
    if n.op == "call_method" and n.target == "requires_grad_":
        flag = n.args[1] if len(n.args) > 1 else n.kwargs.get("requires_grad", True)
        return ".requires_grad_(False)" if flag is False else None
    if n.op == "call_function":
        if n.target is torch.detach:
            return "torch.detach()"
        if n.target is getattr and len(n.args) > 1 and n.args[1] == "data":
            return ".data"
    return None


VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t", "squeeze",
    "unsqueeze", "expand", "expand_as", "narrow", "select", "split", "chunk", "unbind", "as_strided",
    "contiguous", "__getitem__", "movedim", "swapaxes", "diagonal", "real", "imag",
}  # fmt: skip

VIEW_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.narrow,
    torch.select, torch.split, torch.chunk, torch.unbind, torch.t, torch.movedim, operator.getitem,
}  # fmt: skip

CHANNELS_FIRST_MODULES = (
    nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LocalResponseNorm, nn.Upsample, nn.PixelShuffle,
)  # fmt: skip

CHANNELS_LAST_MODULES = (nn.LayerNorm, nn.Linear)  # they act on (and output) the last axis


# -- element-wise and channel-wise operations: one table for the channel-axis walk and the
# channel-sparse planner (``attribution.plan``) --------------------------------------------------
# modules and functions applied to each element on its own (activations, dropout in eval mode, identity)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
    nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
)  # fmt: skip
UNARY_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.hardswish, F.hardsigmoid, F.elu, F.dropout,
}  # fmt: skip
UNARY_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clamp_min"}
# arithmetic of two values (element by element, broadcasting): ``COMBINE`` is what the planner accepts
COMBINE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
ELEMENTWISE_FUNCTIONS = UNARY_FUNCTIONS | COMBINE | {operator.truediv, operator.neg}
ELEMENTWISE_METHODS = UNARY_METHODS | {"add", "mul", "sub", "__add__", "__mul__", "contiguous", "clone"}
# channel n to channel n, in eval mode: the element-wise operations, batch norm and spatial pooling
CHANNELWISE_MODULES = ELEMENTWISE_MODULES + (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
CHANNELWISE_FUNCTIONS = UNARY_FUNCTIONS | {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
CHANNELWISE_METHODS = UNARY_METHODS

# functions whose 4-D output is channels first
CHANNELS_FIRST_FUNCTIONS = {
    F.conv2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.batch_norm, F.interpolate,
}  # fmt: skip


# -- walks over a traced graph -----------------------------------------------------------------
def descendants(starts: Iterable[fx.Node]) -> set:
    """The nodes computed from ``starts`` (``starts`` included)."""
    seen, stack = set(), list(starts)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.users)
    return seen


def closure(outputs: Iterable[fx.Node], stop) -> set:
    """The nodes ``outputs`` are computed from, not walking past the nodes in ``stop``."""
    needed, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if n in needed or n in stop:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    return needed
