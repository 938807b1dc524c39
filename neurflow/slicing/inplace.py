"""In-place writes of a traced graph, rewritten out of place (``out_of_place``)."""

from __future__ import annotations

import inspect
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

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


def write_of(n: fx.Node, modules: dict):
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
        kind = write_of(n, modules)
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
