"""``LayerGraph``: the model traced once with the analysed layers as leaves, checked (every layer
called once, on the way to the output, top down, joined by differentiable operations) and cut
into the recorder, prefixes and segments."""

from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from ..config import DEFAULTS
from ..errors import NeurFlowError, unknown_name
from .axes import Inside, channels_first, channels_last, known_axis, module_axis
from .inplace import out_of_place
from .norms import freeze
from .ops import closure, cut_of, descendants
from .trace import LAYERS_HINT, code_digest, global_hook_kind, hook_kind, is_standard, trace_model, usable_layers

# -- in-place writes, rewritten out of place -----------------------------------------------------


# -- where the gradient cannot pass --------------------------------------------------------------


# -- the channel axis of a 4-D output ------------------------------------------------------


class LayerGraph:
    """The traced model with ``layers`` as leaves and the sub-networks cut from it."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        leaf_modules: Sequence[type] = (),
        channel_axis: str = DEFAULTS.channel_axis,
    ):
        self.model = model
        self.layers = list(layers)
        self.leaf_modules = tuple(leaf_modules)
        flat_tracer, self._flat = trace_model(model, leaf_modules=leaf_modules)
        self._check_names(usable_layers(flat_tracer))
        _, self.graph = trace_model(model, [*self.layers, *self._hooked_leaves()], leaf_modules)
        self.nodes: dict[str, fx.Node] = {
            str(n.target): n for n in self.graph.nodes if n.op == "call_module" and n.target in self.layers
        }
        self._no_writes_into_inputs(model)
        replaced = out_of_place(self.graph, dict(model.named_modules()))
        self.nodes = {name: replaced.get(n, n) for name, n in self.nodes.items()}
        self.inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._output = next(n for n in self.graph.nodes if n.op == "output")
        self._depends_on_input = descendants(self.inputs)
        self._check_on_the_output_path()
        self._check_order_and_gradients()
        self.axes = self._channel_axes(channel_axis)

    def _check_names(self, usable: list[str]) -> None:
        """Every layer a module called exactly once in ``forward``, each named once, none inside another."""
        for name in self.layers:
            if name not in usable:
                if name in dict(self.model.named_modules()):
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

    def _hooked_leaves(self) -> list[str]:
        """The modules with forward hooks that the graph must call whole so that their hooks run
        (torch.fx traces through a module's ``forward`` and runs its hooks once, on the tracing
        proxies, never on the data).  An analysed layer, torch's own modules, ``leaf_modules`` and
        what lies inside them are called whole already; a module an analysed layer lies in, the
        model itself or a global module hook cannot be: refused (``NeurFlowError``)."""
        model_kind = hook_kind(self.model)
        if global_hook_kind() or model_kind:
            raise NeurFlowError(
                "model",
                "a model without hooks on itself and no global module hooks",
                f"{type(self.model).__name__} with {global_hook_kind() or model_kind}",
                "the sliced graph runs the model's forward(), not hooks around the whole model; remove the hook or "
                "write what it does into forward()",
            )
        leaves: list[str] = []
        for name, m in self.model.named_modules():
            kind = hook_kind(m)
            whole = name in self.layers or is_standard(m) or isinstance(m, self.leaf_modules)
            if not kind or whole or any(name.startswith(a + ".") for a in [*self.layers, *leaves]):
                continue
            inside = [a for a in self.layers if a.startswith(name + ".")]
            if inside:
                raise NeurFlowError(
                    "layers",
                    "layers outside the modules that have forward hooks",
                    ",".join(inside),
                    f"{name} has {kind}, which the sliced graph cannot run: it opens {name} to reach {inside[0]}; "
                    f"remove the hook, write what it does into forward(), or pick layers outside {name}",
                )
            leaves.append(name)
        return leaves

    def _check_on_the_output_path(self) -> None:
        """Every layer on the way to the output (not a discarded side head)."""
        to_output = closure([self._output], set())
        for name in self.layers:
            if self.nodes[name] not in to_output:
                raise NeurFlowError(
                    "layers",
                    "layers the model's output is computed from",
                    name,
                    f"the model's output does not depend on {name} (its result is discarded or not part of the "
                    "output); pick layers on the path to the output",
                )

    def _check_order_and_gradients(self) -> None:
        """Layers top down, each computed from the one below through differentiable operations."""
        modules = dict(self.model.named_modules())
        for upper, lower in zip(self.layers, self.layers[1:]):
            from_lower = descendants([self.nodes[lower]])
            if self.nodes[upper] not in from_lower:
                raise NeurFlowError(
                    "layers",
                    "names top down, each computed from the next one",
                    f"{upper} before {lower}",
                    f"{upper} does not depend on {lower}; list the class layer first",
                )
            path = from_lower & closure([self.nodes[upper]], {self.nodes[lower]})
            for n in sorted(path, key=lambda n: list(self.graph.nodes).index(n)):
                what = cut_of(n)
                if what is None and n.op == "call_module" and not is_standard(modules[n.target]):
                    what = self._inside(modules[n.target]).cut
                    what = what and f"{what} inside {n.target}"
                if what:
                    raise self.cut_error(upper, lower, what)

    def _channel_axes(self, channel_axis: str) -> dict[str, int | None]:
        """Where the channels of each layer's 4-D output lie: read off its module (``module_axis``),
        else ``channel_axis``; None: neither says (``known_axis`` decides on the output's shape)."""
        given = {"auto": None, "1": 1, "-1": -1}.get(str(channel_axis), "bad")
        if given == "bad":
            raise NeurFlowError("channel_axis", "auto, 1 or -1", channel_axis)
        modules = dict(self.model.named_modules())
        axes: dict[str, int | None] = {}
        for name in self.layers:
            axis = module_axis(modules[name], self._inside)
            axes[name] = axis if axis is not None else given  # type: ignore[assignment]
        return axes

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

    def _inside(self, module: nn.Module) -> Inside:
        cache = self.__dict__.setdefault("_insides", {})
        if id(module) not in cache:
            cache[id(module)] = Inside(module, self.leaf_modules)
        return cache[id(module)]

    def _no_writes_into_inputs(self, model: nn.Module) -> None:
        """A traced-into-nothing module (an analysed layer, a leaf module) whose own forward
        writes into its input is given a copy: the value it reads stays as it was (a layer's
        recorded output, the input integrated gradients differentiate)."""
        modules = dict(model.named_modules())
        for n in list(self.graph.nodes):
            if (
                n.op != "call_module"
                or is_standard(modules[n.target])
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

    def _module(self, inputs, outputs, single: bool, batch_nodes=(), check: bool = False) -> fx.GraphModule:
        """The sub-network ``inputs`` -> ``outputs``.  A channels-last layer (axis -1) is seen as
        ``[B, C, H, W]`` from outside: its output permuted to channels first, an input of it
        permuted back; with ``check``, a layer whose axis is unknown has its output checked."""
        needed = closure(outputs, set(inputs) | set(batch_nodes))
        layer_of = {node: name for name, node in self.nodes.items()}
        g = fx.Graph()
        env = {}
        for i, n in enumerate(inputs):
            env[n] = g.placeholder(f"in_{i}_{n.name}")
            if n in layer_of and self.axes.get(layer_of[n]) == -1:
                env[n] = g.call_function(channels_last, (env[n],))
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
                return g.call_function(channels_first, (env[o],))
            if axis is None and check:
                return g.call_function(known_axis, (env[o], layer_of[o]))
            return env[o]

        g.output(seen(outputs[0]) if single else tuple(seen(o) for o in outputs))
        return fx.GraphModule(self.model, g)

    @staticmethod
    def _is_batch_size(n: fx.Node) -> bool:
        """``t.size(0)``, ``t.size(dim=0)`` or ``t.shape[0]``: the batch size, as ``forward`` often
        reads it (``x.view(x.size(0), -1)``)."""
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
        from_lower = descendants([lower_n])
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

    def cut(self, lower: str, upper: str, norm_rule: str = DEFAULTS.norm_rule) -> tuple[nn.Module, nn.Module]:
        """(prefix, segment) for attribution: under ``norm_rule`` frozen the segment's LayerNorm,
        GroupNorm and RMSNorm hold their scale on the crop, an extra output of the prefix and
        input of the segment (``slicing.norms``)."""
        prefix, segment = self.prefix(lower, upper), self.segment(lower, upper)
        if norm_rule == "plain":
            return prefix, segment
        return freeze(prefix, segment, self.leaf_modules)
