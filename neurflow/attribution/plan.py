"""The channel-sparse *plan* of a segment: whether its last stage is channel-wise after one
convolution or linear map ``L``, and the parts the sparse kernels evaluate (``attribution.sparse``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..slicing import (
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    COMBINE,
    FlatTracer,
    channels_first,
    channels_last,
    descendants,
    out_of_place,
)


@dataclass
class SparsePlan:
    """How a segment is evaluated channel-sparsely: the flattened graph module and its map ``L``."""

    module: fx.GraphModule
    last: nn.Conv2d | nn.Linear  # L (a plain map: groups 1, zero padding)
    direct: bool  # L's input is the segment input itself (and L is the tail's only source)
    node: fx.Node | None = None  # L's node in ``module.graph``
    # every source of the channel-wise tail: (conv/linear module, its input is the segment input),
    # (None, True) for the segment input itself (an identity shortcut); the first is L
    sources: tuple = ()
    # the maps that read the segment input and feed the tail's non-direct sources (e.g. a residual
    # block's first convolution): when every path from the input to those sources starts with one
    # of them, their transposes commute with the sum over the quadrature steps (``linear_front``)
    front: tuple = ()
    linear_front: bool = False
    # the graph's layout steps the segment had (a channels-last layer seen as [B, C, H, W],
    # ``slicing.channels_first``), dropped from ``module``: exact only where the value they see is
    # not 4-D (``fits`` checks it), the dense path otherwise; i: on input i, -1: on the output
    layout: tuple = ()
    _tail: fx.GraphModule | None = field(default=None, repr=False, compare=False)
    _body: tuple | None = field(default=None, repr=False, compare=False)

    def tail(self) -> fx.GraphModule:
        """(z = L's output, *extras) -> the segment's output: the channel-wise part alone (built once)."""
        if self._tail is None:
            self._tail = self._cut_tail()
        return self._tail

    def body(self) -> tuple[fx.GraphModule, tuple]:
        """(x, *outputs of the maps that read x, *extras) -> the segment's output, and those maps in
        order (the front maps, then the direct sources): they are linear, so their outputs along
        the IG path are scaled copies of one evaluation per crop (built once)."""
        if self._body is None:
            modules = dict(self.module.named_modules())
            graph = self.module.graph
            x, *extras = [n for n in graph.nodes if n.op == "placeholder"]
            direct = [m for m, d in self.sources if m is not None and d]
            firsts = list(self.front) + direct
            g = fx.Graph()
            env = {x: g.placeholder(x.name)}
            cut = {}
            for n in graph.nodes:
                if n.op == "call_module" and n.args and n.args[0] is x:
                    m = modules[n.target]
                    if any(m is f for f in firsts):
                        cut[next(i for i, f in enumerate(firsts) if f is m)] = n
            for i in range(len(firsts)):
                env[cut[i]] = g.placeholder(f"first_{i}")
            for ph in extras:
                env[ph] = g.placeholder(ph.name)
            for n in graph.nodes:
                if n not in env:
                    env[n] = g.node_copy(n, lambda a: env[a])
            body = fx.GraphModule(self.module, g)
            body.graph.eliminate_dead_code()
            body.recompile()
            self._body = (body, tuple(firsts))
        return self._body

    def _cut_tail(self) -> fx.GraphModule:
        assert self.node is not None
        graph = self.module.graph
        out = next(n for n in graph.nodes if n.op == "output")
        needed, stack = set(), [out.args[0]]
        while stack:
            n = stack.pop()
            if n in needed or n is self.node:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        g = fx.Graph()
        env = {self.node: g.placeholder("z")}
        for ph in [n for n in graph.nodes if n.op == "placeholder"][1:]:  # the extras, in order
            env[ph] = g.placeholder(ph.name)
        for n in graph.nodes:
            if n in needed and n not in env:
                if n.op == "placeholder":
                    raise ValueError("the tail reads the segment input")
                env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[out.args[0]])
        return fx.GraphModule(self.module, g)


def plan_segment(segment: nn.Module, leaf_modules: Sequence[type] = ()) -> SparsePlan | None:
    """The channel-sparse plan of ``segment`` (its first input is the lower activation), or None
    where its structure does not allow one (the dense path is used there)."""
    try:
        graph = FlatTracer(leaf_modules).trace(segment)
    except Exception:  # noqa: BLE001 - a segment that does not flatten keeps the dense path
        return None

    out_of_place(graph, dict(segment.named_modules()))
    layout = _drop_layout_steps(graph)
    gm = fx.GraphModule(segment, graph)
    _functional_maps_as_modules(gm)
    graph = gm.graph
    modules = dict(gm.named_modules())
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    out = next(n for n in graph.nodes if n.op == "output")
    if not inputs or not isinstance(out.args[0], fx.Node):
        return None
    x = inputs[0]
    found = _tail_sources(out.args[0], x, modules, descendants([x]))
    if found is None:
        return None
    sources, seen = found
    maps = [n for n in sources if n is not x]
    if not maps:
        return None
    maps.sort(key=lambda n: list(graph.nodes).index(n), reverse=True)  # L: the last map in forward order
    for node in maps:
        m = modules[node.target]
        if not _plain_map(m) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            return None
        if sum(1 for n in graph.nodes if n.op == "call_module" and n.target == node.target) != 1:
            return None
        if not node.args or not isinstance(node.args[0], fx.Node) or node.kwargs:
            return None
    if any(a in descendants([b]) for a in maps for b in maps if a is not b):
        return None  # maps in series (a whole ResNet stage): the output of each is captured detached
    node = maps[0]
    srcs = tuple((modules[n.target], n.args[0] is x) for n in maps) + (((None, True),) if x in sources else ())
    single = len(srcs) == 1 and srcs[0][1]
    front, linear = _linear_front(graph, modules, x, maps, seen) if not single else ((), False)
    return SparsePlan(
        gm, modules[node.target], single, node, srcs, front=front, linear_front=linear, layout=tuple(layout)
    )


def _drop_layout_steps(graph: fx.Graph) -> list:
    """Drop the channels-first/-last layout steps of a channels-last layer (identities on [B, C]
    and [B, T, D]; see ``SparsePlan.layout``); returns where they were: input i, or -1 the output."""
    layout = []
    places = [n for n in graph.nodes if n.op == "placeholder"]
    for n in list(graph.nodes):
        if n.op == "call_function" and n.target in (channels_first, channels_last):
            src = n.args[0]
            layout.append(places.index(src) if src in places else -1)
            n.replace_all_uses_with(src)
            graph.erase_node(n)
    return layout


def _tail_sources(out: fx.Node, x: fx.Node, modules: dict, from_x: set) -> tuple[list, set] | None:
    """Walk up the channel-wise tail from the output to its sources - convolutions / linear maps
    (L) and the segment input itself (an identity shortcut, as in a residual block): (sources, the
    tail's nodes), or None where a step is not channel-wise."""
    sources: list = []
    seen, stack = set(), [out]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if (node.op == "call_module" and isinstance(modules.get(node.target), (nn.Conv2d, nn.Linear))) or node is x:
            sources.append(node)
            continue
        ups = _channelwise_inputs(node, modules, from_x)
        if ups is None:
            return None
        stack.extend(ups)
    return sources, seen


def _linear_front(graph: fx.Graph, modules: dict, x: fx.Node, maps: list, tail: set) -> tuple[tuple, bool]:
    """The front maps of a segment (see ``SparsePlan.front``) and whether the input reaches the tail's
    non-direct sources only through them: every user of the input is a front map (a convolution or
    linear map with zero padding, called once, on the input alone), a direct source or a tail op,
    and no non-direct source's input is reachable from the input around the front maps."""
    direct = {n for n in maps if n.args[0] is x}
    front = []
    for user in x.users:
        if user in direct or user in tail:
            continue
        m = modules.get(user.target) if user.op == "call_module" else None
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or user.args[0] is not x or len(user.args) != 1 or user.kwargs:
            return (), False
        if not isinstance(m, nn.Conv2d) or not _plain_map(m):  # conv fronts only (a Linear's bias axis varies)
            return (), False
        if sum(1 for n in graph.nodes if n.op == "call_module" and n.target == user.target) != 1:
            return (), False
        front.append(user)
    if not front and len(direct) < len(maps):
        return (), False
    stops = set(front) | set(maps)
    reach, stack = set(), [x]
    while stack:
        n = stack.pop()
        if n in reach:
            continue
        reach.add(n)
        stack.extend(u for u in n.users if u not in stops)
    if any(n.args[0] in reach for n in maps if n not in direct):
        return (), False
    return tuple(modules[n.target] for n in front), True


def _functional_maps_as_modules(gm: fx.GraphModule) -> None:
    """Rewrite ``conv2d(x, weight, bias, stride, padding, dilation, groups)`` and ``linear(x, weight,
    bias)`` calls on the module's own parameters (a Conv2d subclass with its own ``forward``, such as
    EfficientNet's static-same-padding convolution, traces to these) into calls of modules that share
    those parameters, so that the plan sees them as maps."""
    count = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in (torch.conv2d, F.conv2d, F.linear, torch._C._nn.linear):
            continue
        args = list(n.args) + [None] * 7
        x, w, b = args[0], args[1], args[2]
        if n.kwargs or not isinstance(w, fx.Node) or w.op != "get_attr":
            continue
        if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
            continue
        weight = gm.get_parameter(str(w.target)) if _is_param(gm, str(w.target)) else None
        bias = None if b is None else (gm.get_parameter(str(b.target)) if _is_param(gm, str(b.target)) else None)
        if weight is None or (b is not None and bias is None):
            continue
        if n.target in (torch.conv2d, F.conv2d):
            stride, padding, dilation, groups = [a if a is not None else d for a, d in zip(args[3:7], (1, 0, 1, 1))]
            if weight.ndim != 4 or isinstance(padding, str):
                continue
            kernel = (weight.shape[2], weight.shape[3])
            m: nn.Module = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride, padding, dilation,
                                     groups, bias=bias is not None, device="meta")  # fmt: skip
        else:
            if weight.ndim != 2:
                continue
            m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        m.weight = weight
        if bias is not None:
            m.bias = bias
        x = _absorb_padding(gm, x, m)
        name = f"_nf_map_{count}"
        count += 1
        gm.add_submodule(name, m)
        with gm.graph.inserting_after(n):
            new = gm.graph.call_module(name, (x,))
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()


def _absorb_padding(gm: fx.GraphModule, x, conv: nn.Module):
    """The input of ``conv`` with a symmetric zero padding (an ``nn.ZeroPad2d`` or ``nn.Identity``
    module used only here) folded into the convolution's own padding."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(x, fx.Node) or x.op != "call_module" or len(x.users) != 1:
        return x
    pad = gm.get_submodule(str(x.target))
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left != right or top != bottom or min(left, top) < 0 or isinstance(conv.padding, str):
            return x
        conv.padding = (conv.padding[0] + top, conv.padding[1] + left)
    elif not isinstance(pad, nn.Identity):
        return x
    return x.args[0]


def _plain_map(m: nn.Module) -> bool:
    """A convolution or linear map computed by torch's own forward (no fake quantisation, no
    same-padding of its own), with numeric zero padding: what the transposes here assume."""
    if isinstance(m, nn.Conv2d):
        return type(m).forward is nn.Conv2d.forward and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def _channelwise_inputs(node: fx.Node, modules: dict, from_x: set) -> list | None:
    """The inputs of a channel-wise ``node`` that depend on the segment input (None: the node is
    not channel-wise); the others are held fixed."""
    ok = (
        (node.op == "call_module" and isinstance(modules.get(node.target), CHANNELWISE_MODULES))
        or (node.op == "call_function" and (node.target in CHANNELWISE_FUNCTIONS or node.target in COMBINE))
        or (node.op == "call_method" and node.target in CHANNELWISE_METHODS)
    )
    if not ok:
        return None
    deps = [a for a in node.all_input_nodes if a in from_x]
    if len(deps) != 1 and not (node.op == "call_function" and node.target in COMBINE and len(deps) == 2):
        return None
    if len(deps) == 2 and node.target not in (operator.add, torch.add, operator.sub, torch.sub):
        return None  # a product of two input-dependent values is not a sum of per-source parts
    return deps
