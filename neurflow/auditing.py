"""Audit a dataset through a circuit: which groups drive the model's mistakes on the target?

By default the *false positives* are the images predicted as the target but labelled otherwise,
set against a sample of *true positives* (predicted and labelled as the target).  For every group
of every analysed layer below the class layer, the group's neurons are zeroed and the drop of the
target logit is measured on both sets:

    fp_logit_drop = mean over false positives of (logit_t - logit_t with the group zeroed)
    tp_logit_drop = the same over the true positives
    score         = fp_logit_drop - tp_logit_drop     (logit units; best first)

A group that the mistakes lean on and the correct predictions do not - a spurious feature -
has a large score.  ``fp_fixed`` is the share of false positives no longer predicted as the
target with the group zeroed, ``tp_kept`` the share of true positives still predicted as it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .circuit import Circuit
from .errors import NeurFlowError
from .probe import logits
from .progress import progress

log = logging.getLogger(__name__)


def split(pred: torch.Tensor, labels: torch.Tensor, target: int, max_images: int, seed: int):
    """(false-positive indices, true-positive indices, totals), each sampled to ``max_images``."""
    fp = ((pred == target) & (labels != target)).nonzero().flatten().numpy()
    tp = ((pred == target) & (labels == target)).nonzero().flatten().numpy()
    totals = {"false_positives": int(len(fp)), "true_positives": int(len(tp))}
    rng = np.random.RandomState(seed)
    if max_images and len(fp) > max_images:
        fp = np.sort(rng.choice(fp, max_images, replace=False))
    if max_images and len(tp) > max_images:
        tp = np.sort(rng.choice(tp, max_images, replace=False))
    return fp, tp, totals


def audit(
    circuit: Circuit,
    model,
    images: torch.Tensor,
    labels,
    max_images: int = 256,
    seed: int = 0,
    layers=None,
    batch_size: int | None = None,
    device: str | None = None,
    quiet: bool = True,
) -> dict:
    """Rank the circuit's groups by ``score`` on ``images``/``labels``; returns the JSON-able result."""
    if labels is None:
        raise NeurFlowError(
            "data",
            "labelled data (false positives need labels)",
            "data without labels",
            "use an image folder with one sub-folder per class, or a .pt dict with 'labels'",
        )
    labels = torch.as_tensor(labels).long()
    if labels.shape[0] != images.shape[0]:
        raise NeurFlowError("data", "one label per image", f"{labels.shape[0]} labels for {images.shape[0]} images")
    if not isinstance(max_images, int) or max_images < 1:
        raise NeurFlowError("max_images", "an integer >= 1", max_images)
    batch_size = batch_size or circuit.config.batch_size
    device = device or circuit.config.device
    t = circuit.target
    names = [l.name for l in circuit.layers]
    chosen = list(layers) if layers else names[1:]
    for name in chosen:
        if name not in names[1:]:
            from .errors import unknown_name

            raise unknown_name("layers", name, names[1:], "layers of the circuit below the class layer")
    base = logits(model, images, batch_size=batch_size, device=device)
    fp, tp, totals = split(base.argmax(1), labels, t, max_images, seed)
    if len(fp) == 0:
        raise NeurFlowError(
            "data",
            f"images predicted as the target ({t}) but labelled otherwise",
            "none",
            "the model makes no false positives on this data; nothing to audit",
        )
    if len(tp) == 0:
        raise NeurFlowError(
            "data",
            f"images predicted and labelled as the target ({t})",
            "none",
            "the audit compares the mistakes with correct predictions of the target",
        )
    x = torch.cat([images[torch.from_numpy(fp)], images[torch.from_numpy(tp)]])
    nf = len(fp)
    ref = base[torch.from_numpy(np.concatenate([fp, tp]))]
    rows = []
    jobs = [(circuit.layer(n), g) for n in chosen for g in circuit.layer(n).groups]
    bar = progress(total=len(jobs), desc="audit", quiet=quiet, unit="group")
    for layer, g in jobs:
        out = logits(model, x, {layer.name: g.neurons}, batch_size=batch_size, device=device)
        drop = (ref[:, t] - out[:, t]).numpy()
        still = (out.argmax(1) == t).numpy()
        fp_drop, tp_drop = float(drop[:nf].mean()), float(drop[nf:].mean())
        rows.append(
            {
                "layer": layer.name,
                "group": int(g.id),
                "fp_logit_drop": fp_drop,
                "tp_logit_drop": tp_drop,
                "score": fp_drop - tp_drop,
                "fp_fixed": float(1 - still[:nf].mean()),
                "tp_kept": float(still[nf:].mean()),
                "neurons": [int(n) for n in g.neurons],
                "exemplars": layer.group_exemplars(g),
            }
        )
        bar.update(1)
    bar.close()
    rows.sort(key=lambda r: (-r["score"], names.index(r["layer"]), r["group"]))
    base_fp, base_tp = base[torch.from_numpy(fp), t], base[torch.from_numpy(tp), t]
    return {
        "target": t,
        "target_name": circuit.target_name,
        "layers": chosen,
        "max_images": max_images,
        "seed": seed,
        **totals,
        "n_false_positives": nf,
        "n_true_positives": int(len(tp)),
        "false_positive_indices": [int(i) for i in fp],
        "true_positive_indices": [int(i) for i in tp],
        "mean_target_logit": {"false_positives": float(base_fp.mean()), "true_positives": float(base_tp.mean())},
        "groups": rows,
    }
