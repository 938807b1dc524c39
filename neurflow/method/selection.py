"""Class images (``predicted`` / ``labelled`` as the target) and crop thumbnails."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import NeurFlowError, counted, unknown_name
from ..sources.stream import as_source
from .probe import predicted_classes


def select_class_images(images, logits, labels, target: int, selection: str):
    """The class images and their indices in ``images`` (a tensor or any source: only these are
    decoded, the unreadable ones among them left out): those ``labels`` mark as ``target``
    (``labelled``: ``logits`` are not read and may be None), or those ``logits`` predict as it
    (logits [N, classes], or ``Predictions``, whose classes are read)."""
    if selection == "labelled":
        if labels is None:
            raise NeurFlowError(
                "selection",
                "labels for 'labelled' selection",
                "data without labels",
                "use {p:selection} predicted or give labelled data",
            )
        classes = torch.as_tensor(labels)
        keep = (classes == target).nonzero().flatten()
        what, common_kind = "labelled as", "most labelled"
    else:
        classes = logits.classes if hasattr(logits, "classes") else predicted_classes(logits)
        keep = (classes == target).nonzero().flatten()
        what, common_kind = "predicted as", "most predicted"
    if keep.numel() == 0:
        classes = classes[classes >= 0].long()  # labels < 0: unlabelled
        top = torch.bincount(classes, minlength=1).topk(min(3, int(classes.max()) + 1 if classes.numel() else 1))
        common = ", ".join(f"{int(c)} ({counted(int(n), 'image')})" for n, c in zip(top.values, top.indices) if n > 0)
        raise NeurFlowError(
            "target",
            f"a class with at least one image {what} it",
            target,
            f"no image is {what} {target}; {common_kind}: {common or 'none'}",
        )
    class_images, kept = as_source(images).take(keep.numpy())
    if len(kept) == 0:
        raise NeurFlowError("target", f"a class with at least one readable image {what} it", target,
                            f"all {counted(int(keep.numel()), 'image')} {what} {target} are unreadable")  # fmt: skip
    return class_images, kept


def resolve_target(target, n_classes: int | None, class_names: Sequence[str] | None) -> int:
    """A class index from an index or a class name (case-insensitive)."""
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        names = list(class_names or [])
        if target in names:
            return names.index(target)
        lower = [n.lower() for n in names]
        if target.lower() in lower:
            return lower.index(target.lower())
        if not names:
            raise NeurFlowError("target", "a class index (this model declares no class names)", target)
        raise unknown_name("target", target, names, "use a class index or one of the model's class names")
    t = int(target)
    if n_classes is not None and not 0 <= t < n_classes:
        raise NeurFlowError("target", f"a class index in 0..{n_classes - 1}", t)
    return t
