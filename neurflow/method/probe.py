"""Probing the model: the one place that reads responses, masked responses and logits.

Everything that runs the user's model forward without gradients goes through here: the pipeline
(pool responses, the adaptive rule's masked responses, the class-image predictions), debugging
(responses of one image's crops, logits with a group zeroed), the audit and the experiments.

A *neuron* is a channel: dimension 1 of a ``[B, C, H, W]`` or ``[B, C]`` output, the last
dimension of a ``[B, T, D]`` token output (``channel_axis``).  A channels-last ``[B, H, W, C]``
layer (torchvision's Swin) reaches these functions already permuted to ``[B, C, H, W]`` by the
``LayerGraph`` (``slicing.axes.module_axis``).  Its *response* to an input is the
spatial (or token) mean of that channel.  Every function leaves the model as it found it
(``preserved``: ``training`` and ``requires_grad`` flags; forward hooks removed on the way out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import traceback
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .._state import on_device, preserved
from ..config import DEFAULTS
from ..errors import NeurFlowError, unknown_name
from ..neurons import channel_axis, channel_mask, response, width
from ..progress import progress
from ..slicing import LAYERS_HINT, Inside, LayerGraph, module_axis
from ..sources.stream import as_source

log = logging.getLogger(__name__)


# -- the channel axis ----------------------------------------------------------------------


# -- the model as found --------------------------------------------------------------------


@contextlib.contextmanager
def zeroed(model: nn.Module, layer: str, neurons: Sequence[int], axis: int | None = None) -> Iterator[nn.Module]:
    """Within the block, the output channels ``neurons`` of sub-module ``layer`` are zero
    (a forward hook, removed on the way out, also on errors).  ``axis``: where a 4-D output's
    channels lie (``LayerGraph.axes``, which honours ``--channel-axis``); None: read off the module."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise unknown_name("layer", layer, [n for n in modules if n], LAYERS_HINT)
    idx = torch.as_tensor(sorted({int(n) for n in neurons}), dtype=torch.long)
    if axis is None:
        axis = module_axis(modules[layer], lambda m: Inside(m, ()))  # -1: a channels-last 4-D output

    def hook(module, args, out):
        if not isinstance(out, torch.Tensor):
            raise NeurFlowError("layer", "a layer whose output is a tensor", f"{layer} -> {type(out).__name__}")
        last = channel_axis(out) == -1 or (out.ndim == 4 and axis == -1)
        n = int(out.shape[-1]) if last else width(out)
        if len(idx) and int(idx.max()) >= n:
            raise NeurFlowError("neurons", f"channel indices below {n} at {layer}", int(idx.max()))
        if not len(idx):
            return out
        out = out.clone()
        if not last:
            out[:, idx.to(out.device)] = 0
        else:
            out[..., idx.to(out.device)] = 0
        return out

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


# -- forward passes ------------------------------------------------------------------------
def logits(
    model: Callable,
    images,
    zero: dict | None = None,
    batch_size: int = DEFAULTS.batch_size,
    device="cpu",
    finite: bool = False,
    axes: dict | None = None,
    workers: int = 0,
    quiet: bool = True,
) -> torch.Tensor:
    """The model's outputs for ``images`` in batches (eval mode, no gradients) with the channels
    of every layer in ``zero`` ({layer: neurons}) zeroed (``axes``: {layer: channel axis}, the
    run's ``LayerGraph.axes``; a layer not in it has its axis read off its module).  ``model`` may be a traced graph
    module (then ``zero`` must be empty).  ``images``: a tensor [N, C, H, W] or any source
    (``sources.stream.as_source``: a folder's images decoded ``batch_size`` at a time by ``workers``
    processes, a progress bar in images/s unless ``quiet``); the row of an image the source could
    not read is NaN.  With ``finite``, NaN or inf outputs (of readable images) are refused.
    Returns a float CPU tensor [N, classes]."""
    if isinstance(images, torch.Tensor):  # slices, as always (any input shape the model takes)
        n = int(images.shape[0])
        batches: Iterator = (
            (np.arange(s, min(s + batch_size, n)), images[s : s + batch_size]) for s in range(0, n, batch_size)
        )
    else:
        source = as_source(images)
        n, batches = len(source), source.batches(batch_size, workers, "predicting", quiet)
    outs: list = []
    rows: list = []
    plan = dict(zero or {})
    # a traced graph module is called through forward(): fx's __call__ prints the generated code
    # to stderr and drops the traceback when an operation in it fails
    forward = model.forward if isinstance(model, fx.GraphModule) else model
    with contextlib.ExitStack() as stack, torch.no_grad():
        if isinstance(model, nn.Module):
            stack.enter_context(on_device(model, device))
            stack.enter_context(preserved(model))
            for name, chans in plan.items():
                stack.enter_context(zeroed(model, name, chans, (axes or {}).get(name)))
        elif plan:
            raise NeurFlowError("model", "an nn.Module (to zero channels of its layers)", type(model).__name__)
        for idx, cpu_batch in batches:
            batch = cpu_batch.to(device)
            try:
                o = forward(batch)
            except _MODEL_FAULTS as exc:
                raise forward_error(model, batch, exc) from None
            if not isinstance(o, torch.Tensor) or o.ndim != 2:
                raise NeurFlowError(
                    "model", "a model whose forward returns logits [B, classes]", getattr(o, "shape", type(o).__name__)
                )
            outs.append(o.float().cpu())
            rows.append(idx)
    if not outs:
        return torch.zeros(0, 0)
    out = torch.cat(outs)
    if finite and not torch.isfinite(out).all():
        raise NeurFlowError("model", "finite outputs", "NaN or inf logits", "check the weights and the input transform")
    if out.shape[0] != n:  # unreadable images: NaN rows in their places
        full = torch.full((n, out.shape[1]), float("nan"))
        full[torch.from_numpy(np.concatenate(rows))] = out
        out = full
    return out


def predicted_classes(pred: torch.Tensor) -> torch.Tensor:
    """The class each row of logits ``pred`` predicts; -1 for a NaN row (an unreadable image)."""
    classes = pred.argmax(1)
    bad = torch.isnan(pred).any(1)
    if bool(bad.any()):
        classes = classes.masked_fill(bad, -1)
    return classes


# what Python and torch raise for a computation that does not fit its input (a shape, a dtype);
# other exceptions (the user's own, NeurFlowError from a hook, Ctrl-C) pass as they are
_MODEL_FAULTS = (ArithmeticError, AssertionError, AttributeError, LookupError, RuntimeError, TypeError, ValueError)
# frames in these folders are not the user's code: torch's and neurflow's
_LIBRARIES = tuple(os.path.dirname(os.path.realpath(f)) + os.sep for f in (torch.__file__, os.path.dirname(__file__)))


def user_frame(tb) -> str:
    """Where in the user's code a traceback ends: its innermost frame outside torch and neurflow,
    as ``FILE:LINE in NAME: code``; a line of torch.fx's trace of a ``forward`` is named by the
    forward it was traced from (``<eval_with_key>.N from FILE:LINE in forward``) and the traced line."""
    found = ""
    for frame, line in traceback.walk_tb(tb):
        code = frame.f_code
        file = code.co_filename
        text = (traceback.FrameSummary(file, line, code.co_name, lookup_line=True).line or "").split(";")[0]
        if file.startswith("<eval_with_key>"):
            origin = file.partition(" from ")[2] or "the model's traced forward"
            found = f"{origin}, traced line: {text}"
        elif not os.path.realpath(file).startswith(_LIBRARIES):
            found = f"{file}:{line} in {getattr(code, 'co_qualname', code.co_name)}: {text}"
    return found


# a message formatted while torch.fx traced the forward (torchvision's ViT size check) names a Proxy,
# not the value it had: shown as "?" (the line names the input's shape)
_PROXY = re.compile(r"Proxy\([^()]*\)")


def forward_error(model, batch: torch.Tensor, exc: BaseException) -> NeurFlowError:
    """The model's forward failed on ``batch``: one line naming the model, the input's shape and
    dtype, the error and where in the user's code it was raised."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    text = _PROXY.sub("?", text)
    where = _PROXY.sub("?", user_frame(exc.__traceback__))
    name = "" if isinstance(model, fx.GraphModule) else f"{type(model).__name__} "
    given = f"input {list(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    return NeurFlowError(
        "model",
        f"a model {name}whose forward accepts the data ({given})",
        f"{type(exc).__name__}: {text}",
        (f"raised at {where}; " if where else "") + "check the data's channels, size and {p:transform}",
    )


def top_k(row: torch.Tensor, k: int = 5, class_names: Sequence[str] | None = None) -> list[dict]:
    """The ``k`` best classes of one logit row: class, name, logit, softmax probability."""
    probs = row.softmax(-1)
    vals, idx = row.topk(min(k, row.numel()))
    names = list(class_names or [])
    return [
        {
            "class": int(i),
            "name": names[int(i)] if int(i) < len(names) else None,
            "logit": float(v),
            "prob": float(probs[int(i)]),
        }
        for v, i in zip(vals, idx)
    ]


def pool_responses(
    graph: LayerGraph,
    pool,
    names: Sequence[str],
    batch_size: int,
    device="cpu",
    quiet: bool = True,
    finite: bool = False,
    desc: str = "activations",
    maps: dict | None = None,
    budget: int = 0,
) -> dict:
    """name -> responses [P, C] (float32 numpy) of every crop of ``pool`` at the layers ``names``
    (one forward pass of the recorder cut from ``graph``).  With ``finite``, NaN or inf is refused.
    ``maps``: its keys name layers whose full outputs on the whole pool are put there (on the
    CPU) when all of them fit ``budget`` bytes; it is emptied when they do not."""
    names = list(names)
    recorder = graph.recorder(names)
    out: dict = {n: [] for n in names}
    wanted = [n for n in (maps or {}) if n in names]  # full outputs kept for the caller
    keep: dict = {}
    pos = 0
    bar = progress(total=len(pool), desc=desc, quiet=quiet, unit="crop")
    with preserved(graph.model), torch.no_grad():
        for idx, crops in pool.batches(batch_size):
            outputs = dict(zip(names, recorder(crops.to(device))))
            for n, o in outputs.items():
                out[n].append(response(o).float().cpu())
            if wanted and pos == 0:  # after the first batch: do the full maps fit the budget?
                need = sum(outputs[n][0].numel() * outputs[n].element_size() for n in wanted) * len(pool)
                if need <= budget:
                    keep = {n: torch.empty((len(pool), *outputs[n].shape[1:]), dtype=outputs[n].dtype) for n in wanted}
                else:
                    log.info("not keeping the pool's maps: %.0f MiB > %.0f MiB", need / 2**20, budget / 2**20)
            for n, full in keep.items():
                full[pos : pos + len(idx)] = outputs[n].cpu()
            pos += len(idx)
            bar.update(len(idx))
    bar.close()
    if maps is not None:
        maps.clear()
        maps.update(keep)
    res = {n: torch.cat(v).numpy() for n, v in out.items()}
    if finite:
        for n, r in res.items():
            if not np.isfinite(r).all():
                raise NeurFlowError(
                    "model",
                    "finite activations",
                    f"NaN or inf at layer {n}",
                    "check the model's weights and the input transform",
                )
    return res


def image_responses(graph: LayerGraph, name: str, images: torch.Tensor, batch_size: int, device="cpu") -> np.ndarray:
    """Responses [N, C] of every channel of layer ``name`` for whole ``images``."""
    rec = graph.recorder([name])
    out = []
    with preserved(graph.model), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(response(rec(images[start : start + batch_size].to(device))[0]).float().cpu())
    return torch.cat(out).numpy()


def layer_width(graph: LayerGraph, pool, name: str, device="cpu") -> int:
    """Number of channels of layer ``name`` (one crop through the recorder)."""
    with preserved(graph.model), torch.no_grad():
        return width(graph.recorder([name])(pool.get([0]).to(device))[0])


def lower_batches(
    graph: LayerGraph, pool, lower: str, upper: str, batch_size: int, device="cpu", crops=None, kept=None
):
    """(crop indices, (lower output, *extras of the segment lower -> upper)) in batches over
    ``crops`` (default: the whole pool): read from ``kept`` (the lower layer's full outputs on the
    pool, from ``pool_responses(maps=...)``; only for segments without extras) or computed."""
    crops = np.arange(len(pool)) if crops is None else np.asarray(crops, dtype=np.int64)
    if kept is not None and not graph.extras(lower, upper):
        for start in range(0, len(crops), batch_size):
            idx = crops[start : start + batch_size]
            yield idx, (kept[torch.from_numpy(idx)].to(device),)
        return
    prefix = graph.prefix(lower, upper)
    for idx, x in pool.batches(batch_size, crops):
        yield idx, tuple(prefix(x.to(device)))


def masked_responses(
    graph: LayerGraph,
    pool,
    upper: str,
    lower: str,
    nodes,
    masks: torch.Tensor,
    crops=None,
    batch_size: int = DEFAULTS.batch_size,
    device="cpu",
    quiet: bool = True,
    desc: str = "",
    kept: torch.Tensor | None = None,
) -> np.ndarray:
    """Responses at ``upper`` on ``crops`` (default: the whole pool) with each mask ([M, C_lower],
    1 keep, 0 zero) applied to the lower layer's channels: [M, len(crops)].  ``nodes`` is the
    upper channel read for every mask (one int for all, or a sequence of M)."""
    segment = graph.segment(lower, upper)
    n_masks = masks.shape[0]
    crops = np.arange(len(pool)) if crops is None else np.asarray(crops, dtype=np.int64)
    chans = torch.as_tensor(np.broadcast_to(np.asarray(nodes, dtype=np.int64), (n_masks,)).copy(), device=device)
    masks = masks.to(device)
    out = np.zeros((n_masks, len(crops)), dtype=np.float32)
    bar = progress(total=len(crops), desc=desc or f"masking {lower}", quiet=quiet, unit="crop")
    pos = 0
    with preserved(graph.model), torch.no_grad():
        for idx, (acts, *extras) in lower_batches(graph, pool, lower, upper, batch_size, device, crops, kept):
            per = max(1, batch_size // len(idx))
            for m0 in range(0, n_masks, per):
                mk = masks[m0 : m0 + per]
                x = channel_mask(acts, mk)
                ex = [e.repeat(mk.shape[0], *([1] * (e.ndim - 1))) for e in extras]
                resp = response(segment(x, *ex)).view(mk.shape[0], len(idx), -1)
                sel = resp[torch.arange(mk.shape[0], device=resp.device), :, chans[m0 : m0 + mk.shape[0]]]
                out[m0 : m0 + mk.shape[0], pos : pos + len(idx)] = sel.float().cpu().numpy()
            pos += len(idx)
            bar.update(len(idx))
    bar.close()
    return out
