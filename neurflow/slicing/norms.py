"""Scale-invariant normalisations held at their value (``--norm-rule frozen``, docs/method.md).

LayerNorm, GroupNorm and RMSNorm divide by a scale computed from their own input, so they are
invariant to scaling it: along IG's zero-baseline path ``alpha * A`` a segment such as
``LayerNorm(z)`` is flat except in a vanishing region near ``alpha = 0`` that the quadrature never
samples, and the attributions miss almost all of ``h(A) - h(0)`` (completeness breaks).

The frozen rule treats each such scale like the segment's other held inputs (the *extras*): it is
computed once on the crop's real activation and held there along the path (the LayerNorm rule of
Ali et al., "XAI for Transformers: better explanations through conservative propagation", ICML
2022).  The normalisation's mean stays a function of its input (it is linear), so between two
layers the segment becomes the same network with each normalisation an affine map, which

* equals the real network at the crop itself (``h(A)`` unchanged), and
* makes IG complete again: the attributions sum to ``h(A) - h(0 | scales of A)``.

``freeze(prefix, segment)`` returns a prefix that also outputs the scales and a segment that takes
them as extra inputs, so every IG path (dense, channel-sparse, evaluation) holds them like any
other extra, batch row by batch row.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from .inplace import out_of_place
from .trace import FlatTracer, hook_kind

log = logging.getLogger(__name__)


def _dims(normalized_shape) -> tuple[int, ...]:
    n = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-n, 0))


def _affine(y: torch.Tensor, weight, bias) -> torch.Tensor:
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def layer_norm_scale(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    return torch.sqrt(input.var(_dims(normalized_shape), unbiased=False, keepdim=True) + eps)


def layer_norm_frozen(scale, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = _dims(normalized_shape)
    return _affine((input - input.mean(dims, keepdim=True)) / scale, weight, bias)


def rms_norm_scale(input, normalized_shape, weight=None, eps=None):
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    return torch.sqrt(input.pow(2).mean(_dims(normalized_shape), keepdim=True) + eps)


def rms_norm_frozen(scale, input, normalized_shape, weight=None, eps=None):
    return _affine(input / scale, weight, None)


def _grouped(input, num_groups):
    return input.reshape(input.shape[0], num_groups, -1)


def group_norm_scale(input, num_groups, weight=None, bias=None, eps=1e-5):
    return torch.sqrt(_grouped(input, num_groups).var(-1, unbiased=False, keepdim=True) + eps)


def group_norm_frozen(scale, input, num_groups, weight=None, bias=None, eps=1e-5):
    g = _grouped(input, num_groups)
    y = ((g - g.mean(-1, keepdim=True)) / scale).reshape(input.shape)
    shape = (1, -1) + (1,) * (input.ndim - 2)  # per-channel affine
    return _affine(y, None if weight is None else weight.view(shape), None if bias is None else bias.view(shape))


# functional form -> (scale of its input, the form with the scale held)
RULES: dict[Callable, tuple[Callable[..., Any], Callable[..., Any]]] = {
    F.layer_norm: (layer_norm_scale, layer_norm_frozen),
    F.group_norm: (group_norm_scale, group_norm_frozen),
    F.rms_norm: (rms_norm_scale, rms_norm_frozen),
}
NORM_MODULES = {nn.LayerNorm: F.layer_norm, nn.GroupNorm: F.group_norm, nn.RMSNorm: F.rms_norm}


def _module_call(g: fx.Graph, n: fx.Node, m: nn.Module) -> tuple:
    """(functional form, arguments after the input) of a normalisation module's call."""

    def param(name):
        return g.get_attr(f"{n.target}.{name}") if getattr(m, name, None) is not None else None

    if isinstance(m, nn.GroupNorm):
        return F.group_norm, (int(m.num_groups), param("weight"), param("bias"), float(m.eps))
    if isinstance(m, nn.RMSNorm):
        return F.rms_norm, (tuple(m.normalized_shape), param("weight"), m.eps)
    assert isinstance(m, nn.LayerNorm)
    return F.layer_norm, (tuple(m.normalized_shape), param("weight"), param("bias"), float(m.eps))


def norm_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The segment's scale-invariant normalisations: modules of ``NORM_MODULES`` (their exact
    types: a subclass with its own ``forward`` is traced through, to its functional call) and
    calls of the functional forms."""
    modules = dict(gm.named_modules())
    found = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and type(modules.get(n.target)) in NORM_MODULES:
            if not hook_kind(modules[n.target]):  # a hooked one stays a call (plain): its hooks run
                found.append(n)
        elif n.op == "call_function" and n.target in RULES:
            found.append(n)
    return found


def _rebuild(gm: fx.GraphModule, frozen: bool) -> fx.GraphModule:
    """A copy of ``gm``'s graph with each normalisation replaced: by its scale-held form, fed by
    one new input per normalisation (``frozen``), or kept and its scale output (else)."""
    modules = dict(gm.named_modules())
    norms = set(norm_nodes(gm))
    g = fx.Graph()
    env: dict = {}
    scale_inputs: list = []
    scales: list = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in gm.graph.nodes:
        if n.op == "output":
            break
        if n in norms:
            if n.op == "call_module":
                fn, rest = _module_call(g, n, modules[n.target])
                x = env[n.args[0]]
            else:
                fn = n.target
                bound = inspect.signature(fn).bind(*n.args, **n.kwargs)
                bound.apply_defaults()
                x, *rest = [fx.map_arg(v, lambda a: env[a]) for v in bound.arguments.values()]
            scale_fn, frozen_fn = RULES[fn]
            if frozen:
                env[n] = g.call_function(frozen_fn, (scale_inputs[len(scales)], x, *rest))
                scales.append(env[n])
            else:
                scales.append(g.call_function(scale_fn, (x, *rest)))
                env[n] = g.node_copy(n, lambda a: env[a])
            continue
        env[n] = g.node_copy(n, lambda a: env[a])
        if frozen and n is placeholders[-1]:
            scale_inputs = [g.placeholder(f"norm_scale_{i}") for i in range(len(norms))]
    if frozen:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        g.output(fx.map_arg(out.args[0], lambda a: env[a]))
    else:
        g.output(tuple(scales))
    out_gm = fx.GraphModule(gm, g)
    out_gm.graph.eliminate_dead_code()
    out_gm.recompile()
    return out_gm


class _WithScales(nn.Module):
    """``prefix`` followed by the scales of the segment's normalisations on its outputs."""

    def __init__(self, prefix: nn.Module, scales: nn.Module):
        super().__init__()
        self.prefix, self.scales = prefix, scales

    def forward(self, x):
        out = tuple(self.prefix(x))
        return (*out, *self.scales(*out))


def _warn_hooked_norms(flat: fx.GraphModule) -> None:
    """A warning per module of the segment that has forward hooks and is or holds a normalisation:
    it is called as it is (its hooks run), so its normalisations are differentiated through (plain)."""
    modules = dict(flat.named_modules())
    for n in flat.graph.nodes:
        m = modules.get(n.target) if n.op == "call_module" else None
        if m is not None and hook_kind(m) and any(type(k) in NORM_MODULES for k in m.modules()):
            log.warning("norm_rule frozen: %s has %s; it is run as it is so that the hook runs, and its "
                        "normalisations are differentiated through (plain)", n.target, hook_kind(m))  # fmt: skip


def freeze(prefix: nn.Module, segment: fx.GraphModule, leaf_modules: Sequence[type] = ()) -> tuple:
    """(prefix, segment) with the segment's normalisations held at their scale on the crop (the
    scales are extra outputs of the prefix and extra inputs of the segment).  The segment is
    traced through its modules first (an analysed layer such as a transformer block is one call
    in the model's graph, its normalisations inside); unchanged when it has none."""
    try:
        flat = fx.GraphModule(segment, FlatTracer(leaf_modules, keep_hooked=True).trace(segment))
    except Exception as exc:  # noqa: BLE001 - a segment that does not trace through keeps its normalisations
        if any(type(m) in NORM_MODULES for m in segment.modules()):
            why = str(exc).splitlines()[0][:120]
            log.warning("norm_rule frozen: the segment does not trace through its modules (%s); its normalisations "
                        "are differentiated through (plain)", why)  # fmt: skip
        return prefix, segment
    _warn_hooked_norms(flat)
    if not norm_nodes(flat):
        return prefix, segment
    out_of_place(flat.graph, dict(flat.named_modules()))
    flat.recompile()
    return _WithScales(prefix, _rebuild(flat, frozen=False)), _rebuild(flat, frozen=True)
