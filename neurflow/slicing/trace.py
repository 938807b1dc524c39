"""Tracing a model with torch.fx: the tracers, the usable layer names (modules called once in
``forward``) and the digest of what the traced code computes besides the weights.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from .._state import preserved
from ..errors import NeurFlowError

LAYERS_HINT = "run `neurflow layers MODEL` to list the usable names"

# the forward hooks a sliced graph must run (``register_forward_hook`` / ``register_forward_pre_hook``,
# ``with_kwargs`` and ``always_call`` ones included: they live in the same dicts)
HOOKS = (("_forward_pre_hooks", "a forward pre-hook"), ("_forward_hooks", "a forward hook"))


def hook_kind(m: nn.Module) -> str | None:
    """What forward hooks ``m`` itself has ("a forward hook", "a forward pre-hook" or both), or None."""
    return " and ".join(what for attr, what in HOOKS if getattr(m, attr, None)) or None


def global_hook_kind() -> str | None:
    """The global module forward hooks torch has (``register_module_forward_hook``, ``..._pre_hook``),
    or None: they run on every module call, the graph modules neurflow builds included."""
    from torch.nn.modules import module as registry

    found = [f"a global module {what[2:]}" for attr, what in HOOKS if getattr(registry, "_global" + attr, None)]
    return " and ".join(found) or None


class HookedModule(Exception):
    """A ``FlatTracer`` that keeps no hooked module met one (``plan_segment`` then keeps the dense path)."""


class ModelTracer(fx.Tracer):
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
        if hook_kind(m) and not self.is_leaf_module(m, name):
            # traced without its hooks: they would run once, on the tracing proxies (``LayerGraph``
            # calls such a module whole so that they run on the data, or refuses it)
            forward = m.forward
        return super().call_module(m, forward, args, kwargs)


class FlatTracer(fx.Tracer):
    """Traces a cut sub-network through its modules down to torch's own (the analysed layers are
    leaves of the model's graph; inside a segment they are opened), ``leaf_modules`` kept whole.

    A module with forward hooks (``hook_kind``) is kept whole with ``keep_hooked`` (it is called,
    so its hooks run); without, tracing stops with ``HookedModule``: whoever rewrites the flat
    graph's module calls (the channel-sparse plan evaluates its maps by their weights) must not
    run such a segment that way."""

    def __init__(self, leaf_modules: Sequence[type] = (), keep_hooked: bool = False):
        super().__init__()
        self.leaf_types = tuple(leaf_modules)
        self.keep_hooked = keep_hooked

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if hook_kind(m):
            if self.keep_hooked:
                return True
            raise HookedModule(f"{qualname} has {hook_kind(m)}")
        return bool(self.leaf_types and isinstance(m, self.leaf_types)) or super().is_leaf_module(m, qualname)


def trace_model(model: nn.Module, leaves=(), leaf_modules=()) -> tuple[ModelTracer, fx.Graph]:
    if isinstance(model, torch.jit.ScriptModule):
        raise NeurFlowError(
            "model",
            "an nn.Module that torch.fx can trace",
            "a TorchScript module",
            "load the Python model instead (package.module:factory or file.py:factory)",
        )
    tracer = ModelTracer(leaves, leaf_modules)
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


def usable_layers(tracer: ModelTracer) -> list[str]:
    return [n for n in tracer.order if n and tracer.calls[n] == 1]


def layer_names(model: nn.Module, leaf_modules: Sequence[type] = ()) -> list[str]:
    """Names of the sub-modules that can be analysed (called exactly once in ``forward``),
    in the order ``forward`` calls them."""
    tracer, _ = trace_model(model, leaf_modules=leaf_modules)
    return usable_layers(tracer)


def code_digest(model: nn.Module, graph: fx.Graph) -> str:
    """SHA-256 of what the traced ``graph`` of ``model`` computes besides the weights: its Python
    code, the type and settings (``extra_repr``) of every module it calls, the tensor constants it
    reads that are not in the state dict, and the forward hooks of the modules (``_function_digest``)."""
    h = hashlib.sha256(graph.python_code(root_module="self").src.encode())
    modules, state = dict(model.named_modules()), model.state_dict(keep_vars=True)
    for name, m in modules.items():  # hooks the graph runs by calling a module (torch.fx does not trace them)
        for attr, what in HOOKS:
            for fn in getattr(m, attr, {}).values():
                h.update(f"\n{name}: {what} {_function_digest(fn)}".encode())
    for n in graph.nodes:
        if n.op == "call_module" and n.target in modules:
            m = modules[n.target]
            h.update(f"\n{n.target}: {type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})".encode())
        elif n.op == "get_attr" and n.target not in state:
            v = _attr(model, n.target)
            if isinstance(v, torch.Tensor):
                h.update(f"\n{n.target}: {v.dtype} {tuple(v.shape)}".encode())
                h.update(_tensor_bytes(v))
    return h.hexdigest()


def _tensor_bytes(v: torch.Tensor) -> bytes:
    t = v.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _function_digest(fn) -> str:
    """What a hook computes, as far as it can be read: its name, its byte code and constants, and
    the plain values (numbers, strings, tensors) it closes over or is bound to."""
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    parts = [getattr(fn, "__qualname__", type(fn).__qualname__)]
    if code is not None:
        parts += [code.co_code.hex(), repr([c for c in code.co_consts if not hasattr(c, "co_code")])]
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            continue
    for v in [*cells, *getattr(fn, "args", ()), *getattr(fn, "keywords", {}).values()]:  # partial: args
        if isinstance(v, torch.Tensor):
            parts.append(f"{v.dtype} {tuple(v.shape)} " + hashlib.sha256(_tensor_bytes(v)).hexdigest())
        elif isinstance(v, (int, float, str, bool, tuple, type(None))):
            parts.append(repr(v))
        else:
            parts.append(type(v).__qualname__)
    return " ".join(parts)


def _attr(root, target: str):
    for part in target.split("."):
        root = getattr(root, part, None)
    return root


def is_standard(m: nn.Module) -> bool:
    """A module of ``torch.nn`` itself (other than ``Sequential``): not traced into."""
    return fx.Tracer().is_leaf_module(m, "")
