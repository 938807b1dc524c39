"""Class images (``predicted`` / ``labelled`` as the target) and crop thumbnails."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import NeurFlowError, unknown_name


def select_class_images(images, logits, labels, target: int, selection: str):
    """The class images and their indices in ``images``."""
    if selection == "labelled":
        if labels is None:
            raise NeurFlowError(
                "selection",
                "labels for 'labelled' selection",
                "data without labels",
                "use {p:selection} predicted or give labelled data",
            )
        keep = (torch.as_tensor(labels) == target).nonzero().flatten()
        what = "labelled as"
    else:
        keep = (logits.argmax(1) == target).nonzero().flatten()
        what = "predicted as"
    if keep.numel() == 0:
        top = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).topk(min(3, logits.shape[1]))
        common = ", ".join(f"{int(c)} ({int(n)} images)" for n, c in zip(top.values, top.indices) if n > 0)
        raise NeurFlowError(
            "target",
            f"a class with at least one image {what} it",
            target,
            f"no image is {what} {target}; most predicted: {common}",
        )
    return images[keep], keep.numpy()


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
