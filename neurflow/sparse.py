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

import operator
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .attribution import IGResult, gauss_legendre, step_batches
from .layers import FlatTracer
from .probe import response, width

# modules and functions that map channel n to channel n (in eval mode)
_CHANNELWISE_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Softplus, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
_CHANNELWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.hardswish, F.hardsigmoid, F.elu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.dropout,
}  # fmt: skip
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clamp_min"}
_COMBINE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}


@dataclass
class Plan:
    """How a segment is evaluated channel-sparsely: the flattened graph module and its map ``L``."""

    module: fx.GraphModule
    last: nn.Module  # L: an nn.Conv2d (groups 1, zero padding) or nn.Linear
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
    # ``layers._channels_first``), dropped from ``module``: exact only where the value they see is
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


def plan(segment: nn.Module, leaf_modules: Sequence[type] = ()) -> Plan | None:
    """The channel-sparse plan of ``segment`` (its first input is the lower activation), or None
    where its structure does not allow one (the dense path is used there)."""
    try:
        graph = FlatTracer(leaf_modules).trace(segment)
    except Exception:  # noqa: BLE001 - a segment that does not flatten keeps the dense path
        return None
    from .layers import out_of_place  # the flattened layers' in-place writes (ReLU(inplace=True)) too

    out_of_place(graph, dict(segment.named_modules()))
    from .layers import _channels_first, _channels_last

    layout = []
    places = [n for n in graph.nodes if n.op == "placeholder"]
    for n in list(graph.nodes):  # identities on [B, C] and [B, T, D]: dropped (see Plan.layout)
        if n.op == "call_function" and n.target in (_channels_first, _channels_last):
            src = n.args[0]
            layout.append(places.index(src) if src in places else -1)
            n.replace_all_uses_with(src)
            graph.erase_node(n)
    gm = fx.GraphModule(segment, graph)
    _functional_maps_as_modules(gm)
    graph = gm.graph
    modules = dict(gm.named_modules())
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    out = next(n for n in graph.nodes if n.op == "output")
    if not inputs or not isinstance(out.args[0], fx.Node):
        return None
    x = inputs[0]
    from_x = _descendants(x)
    # walk up the channel-wise tail from the output to its sources: convolutions / linear maps
    # (L) and the segment input itself (an identity shortcut, as in a residual block)
    sources: list = []
    seen, stack = set(), [out.args[0]]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules.get(node.target), (nn.Conv2d, nn.Linear)):
            sources.append(node)
            continue
        if node is x:
            sources.append(node)
            continue
        ups = _channelwise_inputs(node, modules, from_x)
        if ups is None:
            return None
        stack.extend(ups)
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
    if any(a in _descendants(b) for a in maps for b in maps if a is not b):
        return None  # maps in series (a whole ResNet stage): the output of each is captured detached
    node = maps[0]
    srcs = tuple((modules[n.target], n.args[0] is x) for n in maps) + (((None, True),) if x in sources else ())
    single = len(srcs) == 1 and srcs[0][1]
    front, linear = _linear_front(graph, modules, x, maps, seen) if not single else ((), False)
    return Plan(gm, modules[node.target], single, node, srcs, front=front, linear_front=linear, layout=tuple(layout))


def _linear_front(graph: fx.Graph, modules: dict, x: fx.Node, maps: list, tail: set) -> tuple[tuple, bool]:
    """The front maps of a segment (see ``Plan.front``) and whether the input reaches the tail's
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
        weight = gm.get_parameter(w.target) if _is_param(gm, w.target) else None
        bias = None if b is None else (gm.get_parameter(b.target) if _is_param(gm, b.target) else None)
        if weight is None or (b is not None and bias is None):
            continue
        if n.target in (torch.conv2d, F.conv2d):
            stride, padding, dilation, groups = [a if a is not None else d for a, d in zip(args[3:7], (1, 0, 1, 1))]
            if weight.ndim != 4 or isinstance(padding, str):
                continue
            m: nn.Module = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride,
                                     padding, dilation, groups, bias=bias is not None, device="meta")  # fmt: skip
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
    pad = gm.get_submodule(x.target)
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


def _descendants(start: fx.Node) -> set:
    seen, stack = set(), [start]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.users)
    return seen


def _channelwise_inputs(node: fx.Node, modules: dict, from_x: set) -> list | None:
    """The inputs of a channel-wise ``node`` that depend on the segment input (None: the node is
    not channel-wise); the others are held fixed."""
    ok = (
        (node.op == "call_module" and isinstance(modules.get(node.target), _CHANNELWISE_MODULES))
        or (node.op == "call_function" and (node.target in _CHANNELWISE_FUNCTIONS or node.target in _COMBINE))
        or (node.op == "call_method" and node.target in _CHANNELWISE_METHODS)
    )
    if not ok:
        return None
    deps = [a for a in node.all_input_nodes if a in from_x]
    if len(deps) != 1 and not (node.op == "call_function" and node.target in _COMBINE and len(deps) == 2):
        return None
    if len(deps) == 2 and node.target not in (operator.add, torch.add, operator.sub, torch.sub):
        return None  # a product of two input-dependent values is not a sum of per-source parts
    return deps


class _Capture:
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

    @property
    def u(self):
        return self.us[0]

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def fits(p: Plan, acts: torch.Tensor, extras: Sequence[torch.Tensor]) -> bool:
    """Whether L's output is [B, C, H, W] (conv) or [B, C] (linear) and the segment's output
    keeps its channels (one example through the segment)."""
    given = [acts, *extras]
    if any(i >= 0 and given[i].ndim == 4 for i in p.layout):
        return False  # a channels-last lower layer: its layout step was dropped from the plan
    with _Capture(p.last) as cap, torch.no_grad():
        out = p.module(acts[:1], *[e[:1] for e in extras])
    z = cap.z
    if z is None or not isinstance(out, torch.Tensor):
        return False
    if -1 in p.layout and out.ndim == 4:
        return False  # a channels-last upper layer: its layout step was dropped from the plan
    want = 2 if isinstance(p.last, nn.Linear) else 4
    return z.ndim == want and out.ndim in (2, 4) and out.shape[1] == z.shape[1]


def _bias(last: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """L's bias shaped to broadcast over its output ``z`` (zero without a bias)."""
    if last.bias is None:
        return torch.zeros((), dtype=z.dtype, device=z.device)
    return last.bias.detach().to(z.dtype).view(1, -1, *([1] * (z.ndim - 2)))


def _transpose(last: nn.Module, g: torch.Tensor, chans: torch.Tensor, input_shape) -> torch.Tensor:
    """For each row i: the gradient at L's input of ``g[i]`` (a gradient at L's output channel
    ``chans[i]``, [H', W'] or a scalar), through L restricted to that channel: [rows, *input_shape]."""
    w = last.weight[chans].to(g.dtype)
    if isinstance(last, nn.Linear):
        return g.reshape(-1, 1) * w
    rows = g.shape[0]
    kh, kw = w.shape[-2:]
    (dh, dw), (ph, pw) = last.dilation, last.padding
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    if tuple(last.stride) == (1, 1) and min(qh, qw) >= 0:
        # stride 1: the transposed map is a correlation of the zero-padded gradient with the flipped
        # kernel: one batched matmul over the gradient's patches (far faster than a grouped conv)
        patches = F.unfold(g.reshape(rows, 1, *g.shape[-2:]), (kh, kw), (dh, dw), (qh, qw))  # [rows, kh kw, HW]
        if patches.shape[-1] == input_shape[1] * input_shape[2]:
            return torch.bmm(w.flip(-1, -2).reshape(rows, w.shape[1], kh * kw), patches).view(rows, *input_shape)
    return torch.nn.grad.conv2d_input(
        (1, rows * input_shape[0], *input_shape[1:]), w, g.reshape(1, rows, *g.shape[-2:]),
        last.stride, last.padding, last.dilation, groups=rows,
    ).view(rows, *input_shape)  # fmt: skip


class _SubTail(fx.Interpreter):
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


def _ig_direct(p: Plan, acts, extras, requests, steps: int, batch_size: int, offsets, scores, totals) -> None:
    """IG of a direct plan: L(alpha x) = alpha (L(x) - b) + b, so one L per crop serves every step;
    the tail runs on the channels the crop's nodes need only; the weighted sum over the steps of
    the tail gradient goes through L transposed once per (node, crop)."""
    alphas, weights = gauss_legendre(steps)
    tail = _SubTail(p.tail(), int(p.last.weight.shape[0]))
    with torch.no_grad():
        zfull = p.last(acts)
        bias = _bias(p.last, zfull)
        zlin = zfull - bias
    a_t = torch.as_tensor(alphas, dtype=zlin.dtype, device=zlin.device)
    w_t = torch.as_tensor(weights, dtype=zlin.dtype, device=zlin.device)
    rows_all = [r for r in range(acts.shape[0]) if len(requests[r])]
    per = max(1, batch_size // steps)
    for c0 in range(0, len(rows_all), per):
        rows = rows_all[c0 : c0 + per]
        ch_np = np.unique(np.concatenate([np.asarray(requests[r], dtype=np.int64) for r in rows]))
        ch = torch.from_numpy(ch_np).to(zlin.device)
        pos = {int(c): i for i, c in enumerate(ch_np)}
        want = torch.zeros(len(rows), len(ch_np), dtype=zlin.dtype, device=zlin.device)
        for i, r in enumerate(rows):
            want[i, [pos[int(c)] for c in requests[r]]] = 1
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
            sl = slice(int(offsets[row]), int(offsets[row + 1]))
            idx = torch.as_tensor([pos[int(c)] for c in requests[row]], device=gsum.device)
            chans = torch.as_tensor(list(requests[row]), device=gsum.device)
            grad = _transpose(p.last, gsum[i, idx], chans, tuple(acts.shape[1:]))
            attr = acts[row].double().unsqueeze(0) * grad
            scores[sl] = response(attr).cpu()
            totals[sl] = attr.flatten(1).sum(1).cpu()


def _ig_through_prefix(p: Plan, acts, extras, requests, steps: int, batch_size: int, offsets, scores, totals):
    """IG of a plan with several sources or a map after other layers: per step one forward and one
    backward of all nodes through the tail; then per node each map transposed on its one channel
    (at the input directly, or followed by a backward through the layers before it) and, for an
    identity shortcut, the node's own channel of the tail gradient at the input."""
    alphas, weights = gauss_legendre(steps)
    alphas_t = torch.as_tensor(alphas, dtype=acts.dtype, device=acts.device)
    weights_t = torch.as_tensor(weights, dtype=acts.dtype, device=acts.device)
    counts = np.asarray([len(r) for r in requests], dtype=np.int64)
    chan_of_slot = np.asarray([c for r in requests for c in r], dtype=np.int64)
    maps = [(m, direct) for m, direct in p.sources if m is not None]
    identity = any(m is None for m, _ in p.sources)
    with _Capture(*[m for m, _ in maps]) as cap:
        for rows_np, rows, stp, base, x in step_batches(acts, counts, alphas_t, batch_size):
            ex = [e[rows] for e in extras]
            item_counts = counts[rows_np]
            rounds = int(item_counts.max())
            with torch.enable_grad():
                r = response(p.module(x, *ex))
                go = torch.zeros_like(r)
                for g in range(rounds):  # every requested channel of every item at once
                    have = np.nonzero(item_counts > g)[0]
                    chans = torch.from_numpy(chan_of_slot[offsets[rows_np[have]] + g]).to(r.device)
                    go[torch.from_numpy(have).to(r.device), chans] = weights_t[stp[torch.from_numpy(have)]].to(go.dtype)
                wrt = list(cap.zs) + ([x] if identity else [])
                pre = [(i, cap.us[i]) for i, (_, direct) in enumerate(maps) if not direct]
                # the tail's backward may pass through values the layers before a map share with it
                tail_grads = torch.autograd.grad(r, wrt, go, allow_unused=True, retain_graph=bool(pre))
                for g in range(rounds):
                    have = np.nonzero(item_counts > g)[0]
                    slot = offsets[rows_np[have]] + g
                    idx = torch.from_numpy(have).to(x.device)
                    chans = torch.from_numpy(chan_of_slot[slot]).to(x.device)
                    grad = torch.zeros_like(base[idx])
                    for i, (m, direct) in enumerate(maps):
                        dz = tail_grads[i]
                        if dz is None or not direct:
                            continue
                        grad += _transpose(m, dz[idx, chans], chans, tuple(base.shape[1:])).to(grad.dtype)
                    if pre:
                        dus = []
                        for i, u in pre:
                            du = torch.zeros_like(u)
                            if tail_grads[i] is not None:
                                du[idx] = _transpose(
                                    maps[i][0], tail_grads[i][idx, chans], chans, tuple(u.shape[1:])
                                ).to(du.dtype)
                            dus.append(du)
                        back = torch.autograd.grad([u for _, u in pre], x, dus, retain_graph=g < rounds - 1)[0]
                        grad += back[idx]
                    if identity and tail_grads[-1] is not None:
                        ar = torch.arange(len(have), device=x.device)
                        grad[ar, chans] += tail_grads[-1][idx, chans]
                    attr = base[idx] * grad
                    slot_t = torch.from_numpy(slot)
                    scores.index_add_(0, slot_t, response(attr).double().cpu())
                    totals.index_add_(0, slot_t, attr.flatten(1).sum(1).double().cpu())


def _transpose_full(m: nn.Module, g: torch.Tensor, input_shape) -> torch.Tensor:
    """The gradient at a map's input of ``g`` (a gradient at its whole output), [rows, *input_shape]."""
    w = m.weight.to(g.dtype)
    if isinstance(m, nn.Linear):
        return g @ w
    return torch.nn.grad.conv2d_input((g.shape[0], *input_shape), w, g, m.stride, m.padding, m.dilation, m.groups)


def _ig_linear_front(p: Plan, acts, extras, requests, steps: int, batch_size: int, offsets, scores, totals):
    """IG of a plan whose input reaches the tail only through linear maps (``Plan.linear_front``).

    The maps that read the input are evaluated once per crop (their outputs along the path are
    scaled copies); per step one forward of the rest, one backward of all nodes through the tail
    and, per node, the backward from the non-direct sources to the front maps' outputs.  The
    weighted sums over the steps of the gradients at the front maps' and direct sources' outputs
    (and at the input, for an identity shortcut) then go through the transposed maps once per
    (node, crop) instead of once per step."""
    alphas, weights = gauss_legendre(steps)
    alphas_t = torch.as_tensor(alphas, dtype=acts.dtype, device=acts.device)
    weights_t = torch.as_tensor(weights, dtype=acts.dtype, device=acts.device)
    counts = np.asarray([len(r) for r in requests], dtype=np.int64)
    chan_of_slot = np.asarray([c for r in requests for c in r], dtype=np.int64)
    body, firsts = p.body()
    n_front = len(p.front)
    pre = [m for m, direct in p.sources if m is not None and not direct]  # maps after other layers
    identity = any(m is None for m, _ in p.sources)
    acc: dict[int, list] = {}  # slot -> the step sums: [per first map..., identity]
    seen_steps = np.zeros(len(counts), dtype=np.int64)
    shape = tuple(acts.shape[1:])

    def finish(row: int) -> None:
        sl = np.arange(offsets[row], offsets[row + 1])
        chans = torch.as_tensor(chan_of_slot[sl], device=acts.device)
        parts = [torch.stack([acc[int(s)][k] for s in sl]) for k in range(len(firsts) + identity)]
        grad = torch.zeros((len(sl), *shape), dtype=torch.float64, device=acts.device)
        for k, m in enumerate(firsts):
            grad += _transpose_full(m, parts[k], shape) if k < n_front else _transpose(m, parts[k], chans, shape)
        if identity:
            grad[torch.arange(len(sl), device=acts.device), chans] += parts[-1]
        attr = acts[row].double().unsqueeze(0) * grad
        scores[sl] = response(attr).cpu()
        totals[sl] = attr.flatten(1).sum(1).cpu()
        for s in sl:
            del acc[int(s)]

    with _Capture(*pre) as cap:
        for rows_np, rows, stp, _, x in step_batches(acts, counts, alphas_t, batch_size):
            ex = [e[rows] for e in extras]
            item_counts = counts[rows_np]
            rounds = int(item_counts.max())
            uniq, inv = np.unique(rows_np, return_inverse=True)
            inv_t = torch.from_numpy(inv).to(acts.device)
            with torch.no_grad():
                outs = []
                for m in firsts:
                    z = m(acts[torch.from_numpy(uniq).to(acts.device)])
                    bias = _bias(m, z)
                    a = alphas_t[stp].view(-1, *([1] * (z.ndim - 1)))
                    outs.append((a * (z - bias)[inv_t] + bias).requires_grad_(True))
            with torch.enable_grad():
                r = response(body(x, *outs, *ex))
                go = torch.zeros_like(r)
                for g in range(rounds):  # every requested channel of every item at once
                    have = np.nonzero(item_counts > g)[0]
                    chans = torch.from_numpy(chan_of_slot[offsets[rows_np[have]] + g]).to(r.device)
                    go[torch.from_numpy(have).to(r.device), chans] = weights_t[stp[torch.from_numpy(have)]].to(go.dtype)
                wrt = list(cap.zs) + outs[n_front:] + ([x] if identity else [])
                tail_grads = torch.autograd.grad(r, wrt, go, allow_unused=True)
                pre_grads, later = tail_grads[: len(pre)], tail_grads[len(pre) :]
                for g in range(rounds):
                    have = np.nonzero(item_counts > g)[0]
                    slot = offsets[rows_np[have]] + g
                    idx = torch.from_numpy(have).to(x.device)
                    chans = torch.from_numpy(chan_of_slot[slot]).to(x.device)
                    got: list = []
                    if n_front:
                        dus = []
                        for i, u in enumerate(cap.us):
                            du = torch.zeros_like(u)
                            if pre_grads[i] is not None:
                                du[idx] = _transpose(pre[i], pre_grads[i][idx, chans], chans, tuple(u.shape[1:])).to(
                                    du.dtype
                                )
                            dus.append(du)
                        back = torch.autograd.grad(
                            list(cap.us), outs[:n_front], dus, retain_graph=g < rounds - 1, allow_unused=True
                        )
                        got += [torch.zeros_like(f[idx]) if b is None else b[idx] for f, b in zip(outs, back)]
                    for k, dz in enumerate(later):
                        ref = outs[n_front + k] if k < len(later) - identity else x
                        got.append(torch.zeros_like(ref[idx, 0]) if dz is None else dz[idx, chans])
                    for j, s in enumerate(slot.tolist()):
                        if s in acc:
                            for total, v in zip(acc[s], got):
                                total += v[j]
                        else:
                            acc[s] = [v[j].double() for v in got]
            np.add.at(seen_steps, rows_np, 1)
            for row in uniq:
                if seen_steps[row] == steps:
                    finish(int(row))
    assert not acc


def integrated_gradients_sparse(
    p: Plan,
    acts: torch.Tensor,
    extras: Sequence[torch.Tensor],
    requests: Sequence[Sequence[int]],
    steps: int = 50,
    batch_size: int = 64,
) -> IGResult | None:
    """``attribution.integrated_gradients`` computed channel-sparsely with the plan ``p``; None
    when the shapes met at run time do not fit the plan (the caller then uses the dense path)."""
    gm = p.module
    n_rows = acts.shape[0]
    if not fits(p, acts, extras):
        return None
    counts = np.asarray([len(r) for r in requests], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_slots = int(offsets[-1])
    c_low = width(acts)  # the channel axis of a [B, T, D] token input is the last
    scores = torch.zeros(n_slots, c_low, dtype=torch.float64)
    totals = torch.zeros(n_slots, dtype=torch.float64)
    deltas = np.zeros(n_slots)

    tail = p.tail() if p.direct else None
    with torch.no_grad():  # h(A) - h(0) for the completeness gap
        for start in range(0, n_rows, batch_size):
            sl = slice(start, start + batch_size)
            ex = [e[sl] for e in extras]
            if tail is not None:  # direct: L(0) is L's bias
                z = p.last(acts[sl])
                h = response(tail(z, *ex)) - response(tail(_bias(p.last, z).expand_as(z).contiguous(), *ex))
            else:
                h = response(gm(acts[sl], *ex)) - response(gm(torch.zeros_like(acts[sl]), *ex))
            diff = h.double().cpu().numpy()
            for i in range(diff.shape[0]):
                row = start + i
                deltas[offsets[row] : offsets[row + 1]] = diff[i, list(requests[row])]

    if p.direct:
        _ig_direct(p, acts, extras, requests, steps, batch_size, offsets, scores, totals)
    elif p.linear_front:
        _ig_linear_front(p, acts, extras, requests, steps, batch_size, offsets, scores, totals)
    else:
        _ig_through_prefix(p, acts, extras, requests, steps, batch_size, offsets, scores, totals)

    def split(a):
        return [a[offsets[i] : offsets[i + 1]] for i in range(n_rows)]

    return IGResult(split(scores.numpy()), split(totals.numpy()), split(deltas))


def masked_prefix_responses(
    p: Plan,
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
