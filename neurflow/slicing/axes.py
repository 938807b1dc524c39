"""Where the channels of a 4-D layer output lie (``[B, C, H, W]`` or ``[B, H, W, C]``), read off
the module or the traced graph, and the layout steps that show a channels-last layer as
channels first.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._state import preserved
from ..errors import NeurFlowError
from .inplace import write_of
from .ops import (
    CHANNELS_FIRST_FUNCTIONS,
    CHANNELS_FIRST_MODULES,
    CHANNELS_LAST_MODULES,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    VIEW_FUNCTIONS,
    VIEW_METHODS,
    closure,
    cut_of,
    descendants,
)
from .trace import ModelTracer, is_standard


def permuted_axis(dims: list) -> int | None:
    """The channel axis after a permute of a channels-first (or -last) 4-D tensor, or None."""
    dims = [int(d) % 4 for d in dims] if all(isinstance(d, int) for d in dims) and len(dims) == 4 else []
    return {(0, 3, 1, 2): 1, (0, 2, 3, 1): -1}.get(tuple(dims))


def module_axis(m: nn.Module, inside=None) -> int | None:
    """Where the channels of ``m``'s output lie when it is 4-D: 1 (``[B, C, H, W]``: convolutions,
    batch norm, pooling), -1 (``[B, H, W, C]``: ``LayerNorm`` and ``Linear`` act on the last axis,
    as in torchvision's Swin) or None where the module does not say.  ``inside``: a callable giving
    the ``Inside`` of a module that is traced into."""
    if isinstance(m, CHANNELS_FIRST_MODULES):
        return 1
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
        return None  # normalises several axes (e.g. [C, H, W]): it does not say where the channels are
    if isinstance(m, CHANNELS_LAST_MODULES) and type(m).forward in (nn.LayerNorm.forward, nn.Linear.forward):
        return -1  # (a subclass with its own forward, e.g. torchvision's LayerNorm2d, is traced into)
    dims = m.__dict__.get("dims")  # torchvision.ops.misc.Permute
    if type(m).__name__ == "Permute" and isinstance(dims, (list, tuple)):
        return permuted_axis(list(dims))
    if is_standard(m) or inside is None:
        return None
    return inside(m).axis


def axis_of(node: fx.Node, modules: dict, seen: set | None = None) -> int | None:
    """The channel axis of a traced node's 4-D value, walking back through element-wise steps to
    the step that decides it (``module_axis``, a permute); None where nothing decides."""
    seen = set() if seen is None else seen
    if node in seen:
        return None
    seen.add(node)
    ups: list = []
    if node.op == "call_module":
        m = modules.get(node.target)
        if m is None:
            return None
        if not isinstance(m, ELEMENTWISE_MODULES) and type(m).__name__ != "StochasticDepth":
            return module_axis(m)
        ups = node.all_input_nodes[:1]
    elif node.op == "call_function" and node.target is torch.permute:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims", ())
        return permuted_axis(list(dims) if isinstance(dims, (list, tuple)) else [])
    elif node.op == "call_method" and node.target == "permute":
        dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) == 2 else ()
        return permuted_axis(list(dims) if isinstance(dims, (list, tuple)) else [dims])
    elif node.op == "call_function" and node.target in CHANNELS_FIRST_FUNCTIONS:
        return 1
    elif node.op == "call_function" and node.target in (torch.cat, torch.concat):  # channels concatenated
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return {1: 1, -1: -1, 3: -1}.get(dim) if isinstance(dim, int) else None
    elif node.op == "call_function" and node.target in (F.layer_norm, F.linear):
        return -1
    elif (node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in ELEMENTWISE_METHODS
    ):
        ups = node.all_input_nodes
    elif node.op == "call_function" and getattr(node.target, "__name__", "") == "stochastic_depth":
        ups = node.all_input_nodes[:1]
    else:
        return None
    found = {a for a in (axis_of(u, modules, seen) for u in ups) if a is not None}
    return found.pop() if len(found) == 1 else None


def channels_first(t):
    """A channels-last 4-D layer output ``[B, H, W, C]`` as ``[B, C, H, W]`` (other ranks as they are)."""
    if isinstance(t, fx.Proxy):  # re-traced (the channel-sparse plan): stays one step
        return t.tracer.create_proxy("call_function", channels_first, (t,), {})
    return t.permute(0, 3, 1, 2) if isinstance(t, torch.Tensor) and t.ndim == 4 else t


def channels_last(t):
    """The inverse of ``channels_first``."""
    if isinstance(t, fx.Proxy):  # re-traced (the channel-sparse plan): stays one step
        return t.tracer.create_proxy("call_function", channels_last, (t,), {})
    return t.permute(0, 2, 3, 1) if isinstance(t, torch.Tensor) and t.ndim == 4 else t


def known_axis(t, name: str):
    """A 4-D output of a layer whose module does not say where its channels lie: kept as
    ``[B, C, H, W]`` when its shape says so (square maps, a different channel count), refused otherwise."""
    if isinstance(t, fx.Proxy):
        return t.tracer.create_proxy("call_function", known_axis, (t, name), {})
    if isinstance(t, torch.Tensor) and t.ndim == 4 and not (t.shape[2] == t.shape[3] != t.shape[1]):
        raise NeurFlowError(
            "channel_axis",
            "a layer whose 4-D output has a known channel axis",
            f"{name} -> {tuple(t.shape)}",
            "its module does not say whether it is [B, C, H, W] or [B, H, W, C]; pass --channel-axis 1 or -1",
        )
    return t


class Inside:
    """What a module's own ``forward`` does with its inputs (traced once, None where it does not trace)."""

    def __init__(self, module: nn.Module, leaf_modules: Sequence[type]):
        self.writes_input, self.cut, self.axis = False, None, None
        try:
            with preserved(module):
                graph = ModelTracer(leaf_modules=leaf_modules).trace(module)
        except Exception:  # noqa: BLE001 - an opaque module: nothing known about its inside
            return
        modules = dict(module.named_modules())
        aliases = set()  # the inputs and the views of them
        for n in graph.nodes:
            if n.op == "placeholder" or (
                any(a in aliases for a in n.all_input_nodes)
                and (
                    (n.op == "call_method" and n.target in VIEW_METHODS)
                    or (n.op == "call_function" and n.target in VIEW_FUNCTIONS)
                    or (n.op == "call_module" and isinstance(modules.get(n.target), (nn.Identity, nn.Flatten)))
                )
            ):
                aliases.add(n)
            elif n.args and isinstance(n.args[0], fx.Node) and n.args[0] in aliases and write_of(n, modules):
                self.writes_input = True
        out = next(n for n in graph.nodes if n.op == "output")
        self.axis = axis_of(out.args[0], modules) if isinstance(out.args[0], fx.Node) else None
        to_out = closure([out], set())
        from_in = descendants([n for n in graph.nodes if n.op == "placeholder"])
        self.cut = next((cut_of(n) for n in graph.nodes if n in to_out and n in from_in and cut_of(n)), None)
