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
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.fx as fx
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


def layer_names(model: nn.Module, leaf_modules: Sequence[type] = ()) -> list[str]:
    """Names of the sub-modules that can be analysed (called exactly once in ``forward``),
    in the order ``forward`` calls them."""
    tracer, _ = _trace(model, leaf_modules=leaf_modules)
    return [n for n in tracer.order if n and tracer.calls[n] == 1]


class LayerGraph:
    """The traced model with ``layers`` as leaves and the sub-networks cut from it."""

    def __init__(self, model: nn.Module, layers: Sequence[str], leaf_modules: Sequence[type] = ()):
        self.model = model
        self.layers = list(layers)
        self.leaf_modules = tuple(leaf_modules)
        usable = layer_names(model, leaf_modules)
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
        self.inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._output = next(n for n in self.graph.nodes if n.op == "output")
        self._depends_on_input = self._descendants(self.inputs)
        # layers must go top down, each reachable from the one below
        for upper, lower in zip(self.layers, self.layers[1:]):
            if self.nodes[upper] not in self._descendants([self.nodes[lower]]):
                raise NeurFlowError(
                    "layers",
                    "names top down, each computed from the next one",
                    f"{upper} before {lower}",
                    f"{upper} does not depend on {lower}; list the class layer first",
                )

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

    def _closure(self, outputs, stop) -> set:
        needed, stack = set(), list(outputs)
        while stack:
            n = stack.pop()
            if n in needed or n in stop:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        return needed

    def _module(self, inputs, outputs, single: bool, batch_nodes=()) -> fx.GraphModule:
        needed = self._closure(outputs, set(inputs) | set(batch_nodes))
        g = fx.Graph()
        env = {}
        for i, n in enumerate(inputs):
            env[n] = g.placeholder(f"in_{i}_{n.name}")
        for n in batch_nodes:  # the batch size, read off the first input instead of the model input
            env[n] = g.call_method("size", (env[inputs[0]], 0))
        for n in self.graph.nodes:
            if n in needed and n not in env:
                if n.op == "placeholder":
                    env[n] = g.placeholder(n.name)
                else:
                    env[n] = g.node_copy(n, lambda a: env[a])
        g.output(env[outputs[0]] if single else tuple(env[o] for o in outputs))
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
        return self._module(self.inputs, [self.nodes[n] for n in names], False)

    def prefix(self, lower: str, upper: str) -> fx.GraphModule:
        """input -> (lower output, *extras of the segment lower -> upper)."""
        return self._module(self.inputs, [self.nodes[lower]] + self.extras(lower, upper), False)

    def segment(self, lower: str, upper: str) -> fx.GraphModule:
        """(lower output, *extras) -> upper output."""
        extras, batch = self._cut(lower, upper)
        return self._module([self.nodes[lower]] + extras, [self.nodes[upper]], True, batch)
