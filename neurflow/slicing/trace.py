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
        return super().call_module(m, forward, args, kwargs)


class FlatTracer(fx.Tracer):
    """Traces a cut sub-network through its modules down to torch's own (the analysed layers are
    leaves of the model's graph; inside a segment they are opened), ``leaf_modules`` kept whole."""

    def __init__(self, leaf_modules: Sequence[type] = ()):
        super().__init__()
        self.leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
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


def is_standard(m: nn.Module) -> bool:
    """A module of ``torch.nn`` itself (other than ``Sequential``): not traced into."""
    return fx.Tracer().is_leaf_module(m, "")
