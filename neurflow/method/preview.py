"""``neurflow run ... --plan``: what a run will do, before it does it.

Counts the images found, the class images and their crops, the (node, crop, step) evaluations of
integrated gradients of the first layer pair (the class layer's one node: ``min(top_k, crops)``
exemplar crops, ``ig_steps`` steps each), and estimates the run's peak memory from its parts:
what this process holds already (the interpreter, torch and the model), the prediction table, the
class images, one batch of input with the activations every module of the model produces on it
(an upper bound of what a forward with gradients keeps), and the batches the decoding workers
hold in flight (two per worker, as a ``DataLoader`` prefetches).  With ``--selection predicted``
the class images are only known after the prediction pass: the plan runs it (streamed, and
cached: the run then reads it back).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config import IG_ORDERS, NeurFlowConfig
from ..errors import counted
from ..slicing import LayerGraph
from ..sources.stream import ImageSource, default_workers
from ..store import model_hash
from .crops import CropPool
from .predictions import predict
from .selection import resolve_target

PREFETCH = 2  # batches a DataLoader worker holds (torch's prefetch_factor default)


@dataclass(frozen=True)
class RunPlan:
    images: int
    class_images: int
    crops: int
    ig_evaluations: int  # (node, crop, step) of the first layer pair
    ig_steps: str  # as the evaluations counted them ("50", or "auto: up to 100")
    memory: dict  # part -> bytes
    target: int
    selection: str  # how the class images were found, in words

    @property
    def peak_bytes(self) -> int:
        return int(sum(self.memory.values()))

    def lines(self) -> list[str]:
        mb = {k: v / 2**20 for k, v in self.memory.items()}
        parts = ", ".join(f"{k} {v:,.0f} MB" for k, v in mb.items())
        return [
            f"images found: {self.images:,}",
            f"class images ({self.selection} {self.target}): {self.class_images:,}",
            f"crops: {self.crops:,}",
            f"IG evaluations of the first layer pair (node, crop, step): {self.ig_evaluations:,} "
            f"(1 node x {min(self.crops, self._top_k):,} crops x {self.ig_steps} steps)",
            f"estimated peak memory: {self.peak_bytes / 2**20:,.0f} MB ({parts})",
        ]

    _top_k: int = 0


def _rss_bytes() -> int:
    """This process's resident memory now (the interpreter, torch, the model loaded)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the peak so far (kilobytes on Linux and BSD)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every module output (leaf modules) of ``model`` on ``x``, and of ``x``."""
    total = [x.numel() * 4]

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            total.append(out.numel() * 4)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(sum(total))


def plan_run(cfg: NeurFlowConfig, model: nn.Module, images: ImageSource, labels, target, layers,
             class_names=None, quiet: bool = True) -> RunPlan:  # fmt: skip
    """The ``RunPlan`` of ``NeurFlow(cfg).fit(model, images, target, layers, labels=labels)``."""
    graph = LayerGraph(model, layers, (), cfg.channel_axis)
    shape = tuple(images.image_shape)
    first, _ = images.take([next(i for i in range(len(images)) if i not in images.unreadable)])
    with torch.no_grad():
        n_classes = int(graph.full()(first).shape[1])
    predicted = not (cfg.selection == "labelled" and labels is not None)
    if not predicted:
        selection = "labelled as"
    elif images.cache_key():
        selection = "predicted as, by the prediction pass: cached, the run reads it back,"
    else:
        selection = "predicted as, by the prediction pass,"
    if predicted:
        workers = default_workers() if cfg.data_workers is None else cfg.data_workers
        pred = predict(graph.full(), images, model_hash(model), graph.code, batch_size=cfg.batch_size,
                       device=cfg.device, workers=workers, cache_dir=cfg.cache_dir, quiet=quiet)  # fmt: skip
        chosen = pred.classes
    else:
        chosen = torch.as_tensor(labels).long()
    t = resolve_target(target, n_classes, class_names)
    n_class = int((chosen == t).sum())
    per_image = len(CropPool(torch.zeros((1,) + shape), cfg.granularities, cfg.stride_ratio))
    crops = per_image * n_class
    steps = max(IG_ORDERS) if cfg.ig_steps == "auto" else int(cfg.ig_steps)
    workers = default_workers() if cfg.data_workers is None else cfg.data_workers
    image_bytes = 4 * int(torch.tensor(shape).prod())
    memory = {
        "this process now (interpreter, torch, the model)": _rss_bytes(),
        "predictions": 4 * len(images) * n_classes,
        "class images": image_bytes * n_class,
        "one batch with activations": activation_bytes(model, first) * cfg.batch_size,
        "decoding": image_bytes * cfg.batch_size * PREFETCH * (workers if images.cache_key() else 0),
    }
    return RunPlan(
        images=len(images),
        class_images=n_class,
        crops=crops,
        ig_evaluations=min(cfg.top_k, crops) * steps,
        ig_steps=f"auto: up to {steps}" if cfg.ig_steps == "auto" else str(steps),
        memory=memory,
        target=t,
        selection=selection,
        _top_k=cfg.top_k,
    )


def describe(plan: RunPlan) -> str:
    return "\n".join(plan.lines()) + f"\nnothing computed beyond that ({counted(plan.images, 'image')} listed)"
