"""Interventions on a model: zero chosen neurons of a layer and read the logits (method.md section 4).

The zeroing is a forward hook on the named sub-module, registered inside a context manager and
removed on the way out (also on errors), so the user's model is left exactly as it was.
A neuron is a channel: dimension 1 of a [B, C, H, W] or [B, C] output, the last dimension of a
[B, T, D] token output (as ``layers.response`` reads them).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .errors import NeurFlowError, unknown_name
from .layers import LAYERS_HINT, preserved


def _zero(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    if out.ndim == 3:
        out[..., idx] = 0
    else:
        out[:, idx] = 0
    return out


@contextlib.contextmanager
def zeroed(model: nn.Module, layer: str, neurons: Sequence[int]):
    """Within the block, the output channels ``neurons`` of sub-module ``layer`` are zero."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise unknown_name("layer", layer, [n for n in modules if n], LAYERS_HINT)
    idx = torch.as_tensor(sorted({int(n) for n in neurons}), dtype=torch.long)

    def hook(module, args, out):
        if not isinstance(out, torch.Tensor):
            raise NeurFlowError("layer", "a layer whose output is a tensor", f"{layer} -> {type(out).__name__}")
        width = out.shape[-1] if out.ndim == 3 else out.shape[1]
        if len(idx) and int(idx.max()) >= width:
            raise NeurFlowError("neurons", f"channel indices below {width} at {layer}", int(idx.max()))
        return _zero(out, idx.to(out.device)) if len(idx) else out

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def logits(model: nn.Module, images: torch.Tensor, layer: str | None = None, neurons: Sequence[int] = (),
           batch_size: int = 64, device="cpu", zero: dict | None = None) -> torch.Tensor:
    """The model's outputs for ``images`` (in eval mode, no gradients), with ``neurons`` of
    ``layer`` zeroed when ``layer`` is given, and the channels of every layer in ``zero``
    ({layer: neurons}).  Returns a float CPU tensor [N, classes]."""
    outs = []
    plan = dict(zero or {})
    if layer is not None:
        plan[layer] = sorted(set(plan.get(layer, ())) | {int(n) for n in neurons})
    with preserved(model), contextlib.ExitStack() as stack, torch.no_grad():
        for name, chans in plan.items():
            stack.enter_context(zeroed(model, name, chans))
        for start in range(0, images.shape[0], batch_size):
            o = model(images[start:start + batch_size].to(device))
            if not isinstance(o, torch.Tensor) or o.ndim != 2:
                raise NeurFlowError("model", "a model whose forward returns logits [B, classes]",
                                    getattr(o, "shape", type(o).__name__))
            outs.append(o.float().cpu())
    if not outs:
        return torch.zeros(0, 0)
    return torch.cat(outs)


def top_k(row: torch.Tensor, k: int = 5, class_names: Sequence[str] | None = None) -> list[dict]:
    """The ``k`` best classes of one logit row: class, name, logit, softmax probability."""
    probs = row.softmax(-1)
    vals, idx = row.topk(min(k, row.numel()))
    names = list(class_names or [])
    return [{"class": int(i), "name": names[int(i)] if int(i) < len(names) else None,
             "logit": float(v), "prob": float(probs[int(i)])} for v, i in zip(vals, idx)]
