"""Layers by name, for any model: torch.fx slicing in the style of torchvision's
``models/feature_extraction.py``.

The model is traced once with the analysed layers as leaf modules.  Everything that lives in
``forward()`` (flatten before the head, GoogLeNet's input transform, residual adds, a ViT's
class token) is part of the traced graph and therefore honoured.  From that graph we cut

* the *recorder*: input -> outputs of the analysed layers (one activation pass),
* the *prefix* of a layer: input -> (its output, extras),
* the *segment* between two layers: (lower output, extras) -> upper output,

where *extras* are the values a segment needs that do not depend on the lower layer (the other
end of a skip connection that jumps over the lower layer).  They are computed from the same input
and held fixed: integrated gradients then attribute the upper response to the lower layer's
activation with everything else that reaches the upper layer kept at its actual value.

The sub-modules of the graph modules are the user's own module objects (shared, not copied), so a
segment costs what its layers cost, and nothing is added to or changed on the user's model.

The traced graph is made free of in-place writes (``out_of_place``: ``nn.ReLU(inplace=True)``,
``F.relu(x, inplace=True)``, ``x.relu_()`` ...): a layer's recorded output stays what the layer
returned, and integrated gradients can start from any layer's output.  The graph also tells
which layers the output depends on and where the gradient is cut (``.detach()``, ``.data``).
"""

from __future__ import annotations

import hashlib
import inspect
import operator
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import NeurFlowError, unknown_name
from .probe import preserved

LAYERS_HINT = "run `neurflow layers MODEL` to list the usable names"


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Iterable[str] = (), leaf_modules: Iterable[type] = ()):
        super().__init__()
        self.leaves = set(leaves)
        self.leaf_types = tuple(leaf_modules)
        self.calls: Counter = Counter()
        self.order: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if name not in self.calls:
            self.order.append(name)
        self.calls[name] += 1
        return super().call_module(m, forward, args, kwargs)


class FlatTracer(fx.Tracer):
    """Traces a cut sub-network through its modules down to torch's own (the analysed layers are
    leaves of the model's graph; inside a segment they are opened), ``leaf_modules`` kept whole."""

    def __init__(self, leaf_modules: Sequence[type] = ()):
        super().__init__()
        self.leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return bool(self.leaf_types and isinstance(m, self.leaf_types)) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, leaves=(), leaf_modules=()) -> tuple[_Tracer, fx.Graph]:
    if isinstance(model, torch.jit.ScriptModule):
        raise NeurFlowError(
            "model",
            "an nn.Module that torch.fx can trace",
            "a TorchScript module",
            "load the Python model instead (package.module:factory or file.py:factory)",
        )
    tracer = _Tracer(leaves, leaf_modules)
    with preserved(model):
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - report any tracing failure as one line
            raise NeurFlowError(
                "model",
                "a model torch.fx can trace",
                type(model).__name__,
                f"tracing failed: {str(exc).splitlines()[0][:200]}; mark the offending sub-modules as leaf_modules",
            ) from None
    return tracer, graph


def _usable(tracer: _Tracer) -> list[str]:
    return [n for n in tracer.order if n and tracer.calls[n] == 1]


def layer_names(model: nn.Module, leaf_modules: Sequence[type] = ()) -> list[str]:
    """Names of the sub-modules that can be analysed (called exactly once in ``forward``),
    in the order ``forward`` calls them."""
    tracer, _ = _trace(model, leaf_modules=leaf_modules)
    return _usable(tracer)


def code_digest(model: nn.Module, graph: fx.Graph) -> str:
    """SHA-256 of what the traced ``graph`` of ``model`` computes besides the weights: its Python
    code, the type and settings (``extra_repr``) of every module it calls, and the tensor
    constants it reads that are not in the state dict."""
    h = hashlib.sha256(graph.python_code(root_module="self").src.encode())
    modules, state = dict(model.named_modules()), model.state_dict(keep_vars=True)
    for n in graph.nodes:
        if n.op == "call_module" and n.target in modules:
            m = modules[n.target]
            h.update(f"\n{n.target}: {type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})".encode())
        elif n.op == "get_attr" and n.target not in state:
            v = _attr(model, n.target)
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu().contiguous().reshape(-1)
                h.update(f"\n{n.target}: {t.dtype} {tuple(v.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _attr(root, target: str):
    for part in target.split("."):
        root = getattr(root, part, None)
    return root


# -- in-place writes, rewritten out of place -----------------------------------------------------
# standard modules with ``inplace``: the out-of-place function and the module attributes it takes
_OUT_OF_PLACE_MODULES = {
    nn.ReLU: (F.relu, ()),
    nn.ReLU6: (F.relu6, ()),
    nn.LeakyReLU: (F.leaky_relu, ("negative_slope",)),
    nn.ELU: (F.elu, ("alpha",)),
    nn.CELU: (F.celu, ("alpha",)),
    nn.SELU: (F.selu, ()),
    nn.SiLU: (F.silu, ()),
    nn.Mish: (F.mish, ()),
    nn.Hardswish: (F.hardswish, ()),
    nn.Hardsigmoid: (F.hardsigmoid, ()),
    nn.Hardtanh: (F.hardtanh, ("min_val", "max_val")),
    nn.Threshold: (F.threshold, ("threshold", "value")),
}
_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}
_NOT_WRITES = {"requires_grad_", "share_memory_"}  # trailing underscore, but no value changes
_SIGNATURES: dict = {}


def _inplace_arg(target) -> int | None:
    """Position of an ``inplace`` parameter of the function ``target`` (None: it has none)."""
    if target not in _SIGNATURES:
        try:
            names = list(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            names = []
        _SIGNATURES[target] = names.index("inplace") if "inplace" in names else None
    return _SIGNATURES[target]


def _write(n: fx.Node, modules: dict):
    """How ``n`` writes into its first argument: (kind, detail), or None when it does not.
    kind: "module" (a standard module with inplace=True: detail the out-of-place function and its
    keyword arguments, or None to run the module on a copy), "flag" (inplace=True given to a
    function: detail the argument position or "kw"), "op" (detail the out-of-place operator /
    function / method name, or None to run it on a copy)."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.op == "call_module":
        m = modules.get(n.target)
        if m is None or getattr(m, "inplace", False) is not True:
            return None
        spec = _OUT_OF_PLACE_MODULES.get(type(m))
        if spec is None or len(n.args) != 1 or n.kwargs or m._forward_hooks or m._forward_pre_hooks:
            return ("module", None)
        fn, attrs = spec
        return ("module", (fn, {a: getattr(m, a) for a in attrs}))
    if n.op == "call_method":
        name = n.target
        if not (isinstance(name, str) and name.endswith("_") and not name.startswith("_")) or name in _NOT_WRITES:
            return None
        return ("op", name[:-1] if hasattr(torch.Tensor, name[:-1]) else None)
    if n.op == "call_function":
        if n.target in _INPLACE_OPERATORS:
            return ("op", _INPLACE_OPERATORS[n.target])
        name = getattr(n.target, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            for mod in (torch, F):
                if getattr(mod, name, None) is n.target:
                    return ("op", getattr(mod, name[:-1], None))
        if n.kwargs.get("inplace") is True:
            return ("flag", "kw")
        i = _inplace_arg(n.target) if callable(n.target) else None
        if i is not None and len(n.args) > i and n.args[i] is True:
            return ("flag", i)
    return None


def out_of_place(graph: fx.Graph, modules: dict) -> dict:
    """Rewrite every in-place write of ``graph`` (``modules``: its root's named modules) out of
    place, in place on the graph: standard activations with ``inplace=True`` become their
    functions, ``inplace=True`` arguments become False, ``x.relu_()`` / ``torch.relu_(x)`` / ``x += y``
    their out-of-place forms; anything else (a Dropout, a module with hooks, ``x.zero_()``) runs on
    a copy of its input.  The values are the same, but none is overwritten: a layer's output stays
    what it returned, and autograd can start from any value.  Readers of the overwritten value
    after the write read the result, as they did in eager mode.  Returns {replaced node: new node}.
    The user's modules are not touched."""
    replaced: dict = {}
    for n in list(graph.nodes):
        kind = _write(n, modules)
        if kind is None:
            continue
        (kind, detail), v = kind, n.args[0]
        new = n
        with graph.inserting_before(n):
            if kind == "module" and detail is not None:
                new = graph.call_function(detail[0], (v,), detail[1])
            elif kind == "flag":
                if detail == "kw":
                    n.kwargs = {**n.kwargs, "inplace": False}
                else:
                    n.args = tuple(False if i == detail else a for i, a in enumerate(n.args))
            elif kind == "op" and detail is not None:
                make = graph.call_method if isinstance(detail, str) else graph.call_function
                new = make(detail, n.args, dict(n.kwargs))
            else:  # no out-of-place form: the write goes to a copy
                n.args = (graph.call_method("clone", (v,)), *n.args[1:])
        if new is not n:
            n.replace_all_uses_with(new)
            graph.erase_node(n)
            replaced[n] = new
        # eager mode overwrote v: what reads v after the write reads the result
        position = {x: i for i, x in enumerate(graph.nodes)}
        for user in list(v.users):
            if position[user] > position[new]:
                user.replace_input_with(v, new)
    return replaced


# -- where the gradient cannot pass --------------------------------------------------------------
_CUT_METHODS = {"detach": ".detach()", "numpy": ".numpy()", "tolist": ".tolist()", "item": ".item()"}


def _cut(n: fx.Node) -> str | None:
    """What in ``n`` stops the gradient (``.detach()``, ``.data``, ...), or None."""
    if n.op == "call_method" and n.target in _CUT_METHODS:
        return _CUT_METHODS[n.target]
    if n.op == "call_method" and n.target == "requires_grad_":
        flag = n.args[1] if len(n.args) > 1 else n.kwargs.get("requires_grad", True)
        return ".requires_grad_(False)" if flag is False else None
    if n.op == "call_function":
        if n.target is torch.detach:
            return "torch.detach()"
        if n.target is getattr and len(n.args) > 1 and n.args[1] == "data":
            return ".data"
    return None


def _standard(m: nn.Module) -> bool:
    """A module of ``torch.nn`` itself (other than ``Sequential``): not traced into."""
    return fx.Tracer().is_leaf_module(m, "")


_VIEWS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t", "squeeze",
    "unsqueeze", "expand", "expand_as", "narrow", "select", "split", "chunk", "unbind", "as_strided",
    "contiguous", "__getitem__", "movedim", "swapaxes", "diagonal", "real", "imag",
}  # fmt: skip
_VIEW_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.narrow,
    torch.select, torch.split, torch.chunk, torch.unbind, torch.t, torch.movedim, operator.getitem,
}  # fmt: skip


# -- the channel axis of a 4-D output ------------------------------------------------------
_CHANNELS_FIRST = (
    nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LocalResponseNorm, nn.Upsample, nn.PixelShuffle,
)  # fmt: skip
_CHANNELS_LAST = (nn.LayerNorm, nn.Linear)  # they act on (and output) the last axis
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
    nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.mul, operator.sub, operator.truediv, operator.neg, torch.add, torch.mul, torch.sub,
    torch.relu, torch.sigmoid, torch.tanh, F.relu, F.gelu, F.silu, F.dropout, F.hardswish, F.leaky_relu,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"add", "mul", "sub", "relu", "sigmoid", "tanh", "contiguous", "clone", "__add__", "__mul__"}
_FIRST_FUNCTIONS = {
    F.conv2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.batch_norm, F.interpolate,
}  # fmt: skip


def _permuted_axis(dims: list) -> int | None:
    """The channel axis after a permute of a channels-first (or -last) 4-D tensor, or None."""
    dims = [int(d) % 4 for d in dims] if all(isinstance(d, int) for d in dims) and len(dims) == 4 else []
    return {(0, 3, 1, 2): 1, (0, 2, 3, 1): -1}.get(tuple(dims))


def module_axis(m: nn.Module, inside=None) -> int | None:
    """Where the channels of ``m``'s output lie when it is 4-D: 1 (``[B, C, H, W]``: convolutions,
    batch norm, pooling), -1 (``[B, H, W, C]``: ``LayerNorm`` and ``Linear`` act on the last axis,
    as in torchvision's Swin) or None where the module does not say.  ``inside``: a callable giving
    the ``_Inside`` of a module that is traced into."""
    if isinstance(m, _CHANNELS_FIRST):
        return 1
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
        return None  # normalises several axes (e.g. [C, H, W]): it does not say where the channels are
    if isinstance(m, _CHANNELS_LAST) and type(m).forward in (nn.LayerNorm.forward, nn.Linear.forward):
        return -1  # (a subclass with its own forward, e.g. torchvision's LayerNorm2d, is traced into)
    dims = m.__dict__.get("dims")  # torchvision.ops.misc.Permute
    if type(m).__name__ == "Permute" and isinstance(dims, (list, tuple)):
        return _permuted_axis(list(dims))
    if _standard(m) or inside is None:
        return None
    return inside(m).axis


def _axis_of(node: fx.Node, modules: dict, seen: set | None = None) -> int | None:
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
        if not isinstance(m, _ELEMENTWISE_MODULES) and type(m).__name__ != "StochasticDepth":
            return module_axis(m)
        ups = node.all_input_nodes[:1]
    elif node.op == "call_function" and node.target is torch.permute:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims", ())
        return _permuted_axis(list(dims) if isinstance(dims, (list, tuple)) else [])
    elif node.op == "call_method" and node.target == "permute":
        dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) == 2 else ()
        return _permuted_axis(list(dims) if isinstance(dims, (list, tuple)) else [dims])
    elif node.op == "call_function" and node.target in _FIRST_FUNCTIONS:
        return 1
    elif node.op == "call_function" and node.target in (torch.cat, torch.concat):  # channels concatenated
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return {1: 1, -1: -1, 3: -1}.get(dim) if isinstance(dim, int) else None
    elif node.op == "call_function" and node.target in (F.layer_norm, F.linear):
        return -1
    elif (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ELEMENTWISE_METHODS
    ):
        ups = node.all_input_nodes
    elif node.op == "call_function" and getattr(node.target, "__name__", "") == "stochastic_depth":
        ups = node.all_input_nodes[:1]
    else:
        return None
    found = {a for a in (_axis_of(u, modules, seen) for u in ups) if a is not None}
    return found.pop() if len(found) == 1 else None


def _channels_first(t):
    """A channels-last 4-D layer output ``[B, H, W, C]`` as ``[B, C, H, W]`` (other ranks as they are)."""
    if isinstance(t, fx.Proxy):  # re-traced (the channel-sparse plan): stays one step
        return t.tracer.create_proxy("call_function", _channels_first, (t,), {})
    return t.permute(0, 3, 1, 2) if isinstance(t, torch.Tensor) and t.ndim == 4 else t


def _channels_last(t):
    """The inverse of ``_channels_first``."""
    if isinstance(t, fx.Proxy):  # re-traced (the channel-sparse plan): stays one step
        return t.tracer.create_proxy("call_function", _channels_last, (t,), {})
    return t.permute(0, 2, 3, 1) if isinstance(t, torch.Tensor) and t.ndim == 4 else t


def _known_axis(t, name: str):
    """A 4-D output of a layer whose module does not say where its channels lie: kept as
    ``[B, C, H, W]`` when its shape says so (square maps, a different channel count), refused otherwise."""
    if isinstance(t, fx.Proxy):
        return t.tracer.create_proxy("call_function", _known_axis, (t, name), {})
    if isinstance(t, torch.Tensor) and t.ndim == 4 and not (t.shape[2] == t.shape[3] != t.shape[1]):
        raise NeurFlowError(
            "channel_axis",
            "a layer whose 4-D output has a known channel axis",
            f"{name} -> {tuple(t.shape)}",
            "its module does not say whether it is [B, C, H, W] or [B, H, W, C]; pass --channel-axis 1 or -1",
        )
    return t


class _Inside:
    """What a module's own ``forward`` does with its inputs (traced once, None where it does not trace)."""

    def __init__(self, module: nn.Module, leaf_modules: Sequence[type]):
        self.writes_input, self.cut, self.axis = False, None, None
        try:
            with preserved(module):
                graph = _Tracer(leaf_modules=leaf_modules).trace(module)
        except Exception:  # noqa: BLE001 - an opaque module: nothing known about its inside
            return
        modules = dict(module.named_modules())
        aliases = set()  # the inputs and the views of them
        for n in graph.nodes:
            if n.op == "placeholder" or (
                any(a in aliases for a in n.all_input_nodes)
                and (
                    (n.op == "call_method" and n.target in _VIEWS)
                    or (n.op == "call_function" and n.target in _VIEW_FUNCTIONS)
                    or (n.op == "call_module" and isinstance(modules.get(n.target), (nn.Identity, nn.Flatten)))
                )
            ):
                aliases.add(n)
            elif n.args and isinstance(n.args[0], fx.Node) and n.args[0] in aliases and _write(n, modules):
                self.writes_input = True
        out = next(n for n in graph.nodes if n.op == "output")
        self.axis = _axis_of(out.args[0], modules) if isinstance(out.args[0], fx.Node) else None
        to_out = LayerGraph._closure([out], set())
        from_in = LayerGraph._descendants([n for n in graph.nodes if n.op == "placeholder"])
        self.cut = next((_cut(n) for n in graph.nodes if n in to_out and n in from_in and _cut(n)), None)


class LayerGraph:
    """The traced model with ``layers`` as leaves and the sub-networks cut from it."""

    def __init__(
        self, model: nn.Module, layers: Sequence[str], leaf_modules: Sequence[type] = (), channel_axis: str = "auto"
    ):
        self.model = model
        self.layers = list(layers)
        self.leaf_modules = tuple(leaf_modules)
        flat_tracer, self._flat = _trace(model, leaf_modules=leaf_modules)
        usable = _usable(flat_tracer)
        for name in self.layers:
            if name not in usable:
                names = dict(model.named_modules())
                if name in names:
                    raise NeurFlowError(
                        "layers",
                        "modules called exactly once in forward()",
                        name,
                        f"{name} is called more than once or not at all; {LAYERS_HINT}",
                    )
                raise unknown_name("layers", name, usable, LAYERS_HINT)
        if len(set(self.layers)) != len(self.layers):
            raise NeurFlowError("layers", "distinct names", ",".join(self.layers))
        for a in self.layers:
            for b in self.layers:
                if a != b and b.startswith(a + "."):
                    raise NeurFlowError(
                        "layers",
                        "layers that do not contain each other",
                        f"{a} and {b}",
                        "pick either the block or its parts",
                    )
        tracer, self.graph = _trace(model, self.layers, leaf_modules)
        self.nodes: dict[str, fx.Node] = {}
        for node in self.graph.nodes:
            if node.op == "call_module" and node.target in self.layers:
                self.nodes[node.target] = node
        self._no_writes_into_inputs(model)
        replaced = out_of_place(self.graph, dict(model.named_modules()))
        self.nodes = {name: replaced.get(n, n) for name, n in self.nodes.items()}
        self.inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._output = next(n for n in self.graph.nodes if n.op == "output")
        self._depends_on_input = self._descendants(self.inputs)
        to_output = self._closure([self._output], set())
        for name in self.layers:  # every layer on the way to the output (not a discarded side head)
            if self.nodes[name] not in to_output:
                raise NeurFlowError(
                    "layers",
                    "layers the model's output is computed from",
                    name,
                    f"the model's output does not depend on {name} (its result is discarded or not part of the "
                    "output); pick layers on the path to the output",
                )
        # layers must go top down, each reachable from the one below, through differentiable operations
        modules = dict(model.named_modules())
        for upper, lower in zip(self.layers, self.layers[1:]):
            from_lower = self._descendants([self.nodes[lower]])
            if self.nodes[upper] not in from_lower:
                raise NeurFlowError(
                    "layers",
                    "names top down, each computed from the next one",
                    f"{upper} before {lower}",
                    f"{upper} does not depend on {lower}; list the class layer first",
                )
            path = from_lower & self._closure([self.nodes[upper]], {self.nodes[lower]})
            for n in sorted(path, key=lambda n: list(self.graph.nodes).index(n)):
                what = _cut(n)
                if what is None and n.op == "call_module" and not _standard(modules[n.target]):
                    what = self._inside(modules[n.target]).cut
                    what = what and f"{what} inside {n.target}"
                if what:
                    raise self.cut_error(upper, lower, what)
        # where the channels of each layer's 4-D output lie: read off its module (``module_axis``),
        # else --channel-axis; None: neither says (``_known_axis`` decides on the output's shape)
        given = {"auto": None, "1": 1, "-1": -1}.get(str(channel_axis), "bad")
        if given == "bad":
            raise NeurFlowError("channel_axis", "auto, 1 or -1", channel_axis)
        self.axes: dict[str, int | None] = {}
        for name in self.layers:
            axis = module_axis(modules[name], self._inside)
            self.axes[name] = axis if axis is not None else given  # type: ignore[assignment]

    def cut_error(self, upper: str, lower: str, what: str = "an operation without a gradient") -> NeurFlowError:
        """The one-line refusal of a pair of layers between which the gradient is cut."""
        return NeurFlowError(
            "layers",
            "adjacent layers joined by differentiable operations",
            f"{upper} and {lower}",
            f"{upper} is computed from {lower} through {what}, which cuts the gradient: integrated gradients "
            "cannot pass it; pick layers on one side of it",
        )

    def check_gradient(self, lower: str, upper: str, segment, acts: torch.Tensor, extras) -> None:
        """Refuse (``cut_error``) when no gradient reaches ``lower`` from ``upper`` at run time: a
        cut the graph does not show (``torch.no_grad()`` inside a module).  One crop, one forward."""
        x = acts[:1].detach().requires_grad_(True)
        with torch.enable_grad():
            out = segment(x, *[e[:1] for e in extras])
        if isinstance(out, torch.Tensor) and not out.requires_grad:
            raise self.cut_error(upper, lower, "an operation without a gradient (torch.no_grad(), a non-PyTorch step)")

    def _inside(self, module: nn.Module) -> _Inside:
        cache = self.__dict__.setdefault("_insides", {})
        if id(module) not in cache:
            cache[id(module)] = _Inside(module, self.leaf_modules)
        return cache[id(module)]

    def _no_writes_into_inputs(self, model: nn.Module) -> None:
        """A traced-into-nothing module (an analysed layer, a leaf module) whose own forward
        writes into its input is given a copy: the value it reads stays as it was (a layer's
        recorded output, the input integrated gradients differentiate)."""
        modules = dict(model.named_modules())
        for n in list(self.graph.nodes):
            if (
                n.op != "call_module"
                or _standard(modules[n.target])
                or not self._inside(modules[n.target]).writes_input
            ):
                continue
            with self.graph.inserting_before(n):
                n.args = tuple(self.graph.call_method("clone", (a,)) if isinstance(a, fx.Node) else a for a in n.args)

    @property
    def code(self) -> str:
        """Digest of the model's traced code (``code_digest``): part of a run's identity."""
        if "_code" not in self.__dict__:
            self._code = code_digest(self.model, self._flat)
        return self._code

    # -- graph helpers -------------------------------------------------------------------
    @staticmethod
    def _descendants(starts) -> set:
        seen, stack = set(), list(starts)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(n.users)
        return seen

    @staticmethod
    def _closure(outputs, stop) -> set:
        needed, stack = set(), list(outputs)
        while stack:
            n = stack.pop()
            if n in needed or n in stop:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        return needed

    def _module(self, inputs, outputs, single: bool, batch_nodes=(), check: bool = False) -> fx.GraphModule:
        """The sub-network ``inputs`` -> ``outputs``.  A channels-last layer (axis -1) is seen as
        ``[B, C, H, W]`` from outside: its output permuted to channels first, an input of it
        permuted back; with ``check``, a layer whose axis is unknown has its output checked."""
        needed = self._closure(outputs, set(inputs) | set(batch_nodes))
        layer_of = {node: name for name, node in self.nodes.items()}
        g = fx.Graph()
        env = {}
        for i, n in enumerate(inputs):
            env[n] = g.placeholder(f"in_{i}_{n.name}")
            if n in layer_of and self.axes.get(layer_of[n]) == -1:
                env[n] = g.call_function(_channels_last, (env[n],))
        for n in batch_nodes:  # the batch size, read off the first input instead of the model input
            env[n] = g.call_method("size", (env[inputs[0]], 0))
        for n in self.graph.nodes:
            if n in needed and n not in env:
                if n.op == "placeholder":
                    env[n] = g.placeholder(n.name)
                else:
                    env[n] = g.node_copy(n, lambda a: env[a])

        def seen(o):
            axis = self.axes.get(layer_of[o], 1) if o in layer_of else 1
            if axis == -1:
                return g.call_function(_channels_first, (env[o],))
            if axis is None and check:
                return g.call_function(_known_axis, (env[o], layer_of[o]))
            return env[o]

        g.output(seen(outputs[0]) if single else tuple(seen(o) for o in outputs))
        return fx.GraphModule(self.model, g)

    @staticmethod
    def _is_batch_size(n: fx.Node) -> bool:
        """``t.size(0)``, ``t.size(dim=0)`` or ``t.shape[0]``: the batch size, as ``forward`` often
        reads it (``x.view(x.size(0), -1)``)."""
        import operator

        if n.op == "call_method" and n.target == "size":
            return bool(tuple(n.args[1:]) == (0,) or n.kwargs.get("dim") == 0)
        if n.op == "call_function" and n.target is operator.getitem and n.args[1:] == (0,):
            src = n.args[0]
            return isinstance(src, fx.Node) and (
                (src.op == "call_function" and src.target is getattr and src.args[1:] == ("shape",))
                or (src.op == "call_method" and src.target == "size" and len(src.args) == 1 and not src.kwargs)
            )
        return False

    def _cut(self, lower: str, upper: str) -> tuple[list, list]:
        """(tensor extras, batch-size nodes) of the segment lower -> upper."""
        found = self._frontier(lower, upper)
        return ([n for n in found if not self._is_batch_size(n)], [n for n in found if self._is_batch_size(n)])

    def extras(self, lower: str, upper: str) -> list[fx.Node]:
        """Input-dependent values the segment lower -> upper needs besides the lower output
        (the batch size excepted: the segment reads it off its own input)."""
        return self._cut(lower, upper)[0]

    def _frontier(self, lower: str, upper: str) -> list[fx.Node]:
        lower_n, upper_n = self.nodes[lower], self.nodes[upper]
        from_lower = self._descendants([lower_n])
        out, seen, stack = [], set(), [upper_n]
        while stack:
            n = stack.pop()
            if n in seen or n is lower_n:
                continue
            seen.add(n)
            if n in self._depends_on_input and n not in from_lower:
                out.append(n)
                continue
            stack.extend(n.all_input_nodes)
        return sorted(out, key=lambda n: list(self.graph.nodes).index(n))

    # -- the cut sub-networks --------------------------------------------------------------
    def full(self) -> fx.GraphModule:
        """The whole traced model (input -> model output)."""
        return fx.GraphModule(self.model, self.graph)

    def recorder(self, names: Sequence[str]) -> fx.GraphModule:
        return self._module(self.inputs, [self.nodes[n] for n in names], False, check=True)

    def prefix(self, lower: str, upper: str) -> fx.GraphModule:
        """input -> (lower output, *extras of the segment lower -> upper)."""
        return self._module(self.inputs, [self.nodes[lower]] + self.extras(lower, upper), False)

    def segment(self, lower: str, upper: str) -> fx.GraphModule:
        """(lower output, *extras) -> upper output."""
        extras, batch = self._cut(lower, upper)
        return self._module([self.nodes[lower]] + extras, [self.nodes[upper]], True, batch)

    def cut(self, lower: str, upper: str, norm_rule: str = "frozen") -> tuple[nn.Module, nn.Module]:
        """(prefix, segment) for attribution: under ``norm_rule`` frozen the segment's LayerNorm,
        GroupNorm and RMSNorm hold their scale on the crop, an extra output of the prefix and
        input of the segment (neurflow/norms.py)."""
        prefix, segment = self.prefix(lower, upper), self.segment(lower, upper)
        if norm_rule == "plain":
            return prefix, segment
        from .norms import freeze

        return freeze(prefix, segment, self.leaf_modules)
