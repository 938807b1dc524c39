"""Audit a dataset through a circuit: which neurons drive the model's mistakes on the target?

By default the *false positives* are the images predicted as the target but labelled otherwise,
set against a sample of *true positives* (predicted and labelled as the target).  The candidates
are, for every analysed layer below the class layer, each layer group and the finer sub-clusters
of the layer's Ward tree down to single neurons (``audit_candidates``).  Each candidate's neurons
are zeroed and, on both sets, with ``m`` an image's target margin (target logit minus the best
other logit; positive, since the image is predicted as the target) and ``m'`` the same with the
candidate zeroed:

    removed(x)         = clip((m - m') / m, 0, 1)   share of the image's margin removed; 1: decision flipped
    fp_margin_removed  = mean over false positives of removed(x)
    tp_margin_removed  = the same over the true positives
    score              = fp_margin_removed - tp_margin_removed     (in [-1, 1]; best first)
    logit_score        = fp_logit_drop - tp_logit_drop              (the earlier score, logit units)

``fp_fixed`` is the share of false positives no longer predicted as the target with the
candidate zeroed, ``tp_kept`` the share of true positives still predicted as it.  The best
``JOINT_TOP`` rows also get ``joint_fp_fixed`` / ``joint_tp_kept``: the same with the union of
rows 1..m zeroed together, and the best ``FP_EXEMPLAR_ROWS`` rows ``fp_exemplars``: the
false-positive crops that activate the candidate most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..circuit import Circuit
from ..errors import NeurFlowError, unknown_name
from ..method.probe import logits, predicted_classes
from ..options import AuditOptions
from ..progress import progress
from ..slicing import LayerGraph
from ..sources.stream import as_source
from .candidates import KINDS, exemplars, fp_exemplars, layer_candidates, zeroed_logits

log = logging.getLogger(__name__)
AUDIT = AuditOptions()  # the defaults of audit (and of neurflow audit's flags)

JOINT_TOP = 5  # rows that get the joint fix of rows 1..m
FP_EXEMPLAR_ROWS = 10  # rows that get false-positive exemplars
FP_EXEMPLARS = 5  # crops per row, from distinct false positives


def _axes(model, layers, channel_axis: str) -> dict | None:
    """Where each analysed layer's channels lie (``LayerGraph.axes``, honouring ``--channel-axis``)."""
    try:
        return LayerGraph(model, layers, channel_axis=channel_axis).axes
    except NeurFlowError:
        return None


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


def margin(out: torch.Tensor, t: int) -> torch.Tensor:
    """Target logit minus the best other logit, per row."""
    others = out.clone()
    others[:, t] = -torch.inf
    return out[:, t] - others.max(1).values


def margin_removed(before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    """clip((m - m') / m, 0, 1) per image: the share of its (positive) margin that zeroing removed."""
    return ((before - after) / before.clamp_min(1e-6)).clamp(0, 1).numpy()


def measures(ref: torch.Tensor, out: torch.Tensor, t: int, nf: int) -> dict:
    """The row's numbers from the logits before (``ref``) and after (``out``); the first ``nf``
    rows are the false positives."""
    drop = (ref[:, t] - out[:, t]).numpy()
    removed = margin_removed(margin(ref, t), margin(out, t))
    still = (out.argmax(1) == t).numpy()
    fp_drop, tp_drop = float(drop[:nf].mean()), float(drop[nf:].mean())
    fp_rm, tp_rm = float(removed[:nf].mean()), float(removed[nf:].mean())
    return {
        "score": fp_rm - tp_rm,
        "fp_margin_removed": fp_rm,
        "tp_margin_removed": tp_rm,
        "logit_score": fp_drop - tp_drop,
        "fp_logit_drop": fp_drop,
        "tp_logit_drop": tp_drop,
        "fp_fixed": float(1 - still[:nf].mean()),
        "tp_kept": float(still[nf:].mean()),
    }


def rank_key(names: list):
    """Best first: score, then logit_score, then layer order, group, kind, neurons."""
    return lambda r: (
        -round(r["score"], 9),
        -round(r["logit_score"], 9),
        names.index(r["layer"]),
        r["group"],
        KINDS.index(r["kind"]),
        r["neurons"],
    )


def audit(
    circuit: Circuit,
    model,
    images,
    labels,
    max_images: int = AUDIT.max_images,
    seed: int = AUDIT.seed,
    layers=None,
    batch_size: int | None = None,
    device: str | None = None,
    quiet: bool = True,
    max_candidates: int = AUDIT.max_candidates,
    predictions=None,
) -> dict:
    """Rank the circuit's candidates (groups, sub-groups, neurons) by how much zeroing each removes
    the model's false positives on the target and keeps its true positives (``score``).

    Parameters
    ----------
    circuit : Circuit
        The fitted circuit (``NeurFlow.circuit_``, or ``neurflow.load(DIR)``).
    model : nn.Module
        The classifier the circuit was computed on.
    images : torch.Tensor or data source
        ``[N, C, H, W]`` images, prepared like the run's inputs, or a source of them
        (``neurflow.load_data(spec).images``, a torch ``Dataset``): only the audited false and
        true positives are decoded when ``predictions`` are given.
    labels : sequence of int or torch.Tensor
        One label per image (false positives need them).
    max_images : int
        False positives and true positives are each sampled to at most this many.
    seed : int
        Seed of that sampling.
    layers : sequence of str, optional
        The circuit layers to audit; default: every layer below the class layer.
    batch_size : int, optional
        Images per forward pass; default: the run's.
    device : str, optional
        Where the model runs (``cpu``, ``cuda``); default: the run's.
    quiet : bool
        No progress bar.
    max_candidates : int
        Per layer, at most this many sub-clusters of the groups' Ward tree (sub-groups down to
        single neurons) audited besides the groups, biggest first.
    predictions : Predictions, optional
        The model's predictions on ``images`` (``neurflow.Run.predictions``, cached): the false and
        true positives are picked from them, and only those images are decoded and predicted again
        (in float32: the margins are exact).  Default: one pass over ``images``.

    Returns
    -------
    dict
        The JSON-able result: the settings, the sampled images and the totals before sampling, the
        mean target logit of each set, the count of candidates of each kind and ``groups``: one row
        per candidate, best first (see the module docstring).
    """
    images = as_source(images)
    labels = _checked_labels(images, labels)
    _check_counts(max_images, max_candidates)
    AuditOptions(seed=seed)  # refuses a seed outside the one range, as the CLI's --seed
    batch_size, device = batch_size or circuit.config.batch_size, device or circuit.config.device
    names = [l.name for l in circuit.layers]
    chosen = _chosen_layers(names, layers)
    if predictions is not None:
        base, classes = None, predictions.classes
    else:
        base = logits(model, images, batch_size=batch_size, device=device)
        classes = predicted_classes(base)
    fp, tp, totals = _sample(classes, labels, circuit.target, max_images, seed)
    probe = AuditSample.of(model, images, base, fp, tp, circuit.target, batch_size, device, circuit.config.channel_axis)
    per_layer = [(circuit.layer(n), _candidates(circuit, n, max_candidates)) for n in chosen]
    rows = sorted(_rows(probe, names[0], per_layer, quiet), key=rank_key(names))
    _annotate_best(probe, circuit, probe.x[: probe.nf], fp, rows)
    settings = {"layers": chosen, "max_images": max_images, "max_candidates": max_candidates, "seed": seed}
    return _result(circuit, settings, totals, fp, tp, probe.ref, rows)


@dataclass(frozen=True)
class AuditSample:
    """What every candidate is measured on: ``x``, the sampled false positives (the first ``nf``)
    then true positives, their logits ``ref``, the target ``t``; and how the model runs."""

    model: Any
    x: torch.Tensor
    ref: torch.Tensor
    t: int
    nf: int
    batch_size: int
    device: Any
    channel_axis: str

    @classmethod
    def of(cls, model, images, base, fp, tp, t: int, batch_size: int, device, channel_axis: str) -> "AuditSample":
        """``images`` a source: only the sampled images are decoded; ``base`` the logits on every
        image (None: the sampled images are predicted here)."""
        both = np.concatenate([fp, tp]).astype(np.int64)
        x, kept = images.take(both)
        if len(kept) != len(both):  # only images read in the prediction pass are sampled
            raise NeurFlowError(
                "data", "the images of the prediction pass", images.describe(), "some became unreadable"
            )
        ref = (
            base[torch.from_numpy(both)] if base is not None else logits(model, x, batch_size=batch_size, device=device)
        )
        return cls(model, x, ref, t, len(fp), batch_size, device, channel_axis)

    def zeroed(self, class_layer: str, layer: str, sets: list):
        """The logits on ``x`` with each neuron set of ``sets`` zeroed at ``layer`` in turn."""
        return zeroed_logits(
            self.model, class_layer, layer, self.x, self.ref, sets, self.batch_size, self.device, self.channel_axis
        )


def _checked_labels(images, labels) -> torch.Tensor:
    """``labels`` as a long tensor, one per image."""
    if labels is None:
        raise NeurFlowError(
            "data",
            "labelled data (false positives need labels)",
            "data without labels",
            "use an image folder with one sub-folder per class, or a .pt dict with 'labels'",
        )
    labels = torch.as_tensor(labels).long()
    if labels.shape[0] != len(images):
        raise NeurFlowError("data", "one label per image", f"{labels.shape[0]} labels for {len(images)} images")
    return labels


def _check_counts(max_images, max_candidates) -> None:
    """``max_images`` and ``max_candidates`` are integers >= 1."""
    if not isinstance(max_images, int) or max_images < 1:
        raise NeurFlowError("max_images", "an integer >= 1", max_images)
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
        raise NeurFlowError("max_candidates", "an integer >= 1 (sub-clusters audited per layer)", max_candidates)


def _chosen_layers(names: list, layers) -> list:
    """The layers to audit: ``layers`` (each a circuit layer below the class layer), or all of those."""
    chosen = list(layers) if layers else names[1:]
    for name in chosen:
        if name not in names[1:]:
            raise unknown_name("layers", name, names[1:], "layers of the circuit below the class layer")
    return chosen


def _sample(pred: torch.Tensor, labels: torch.Tensor, t: int, max_images: int, seed: int):
    """``split``, refused when there is no false positive or no true positive to compare."""
    fp, tp, totals = split(pred, labels, t, max_images, seed)
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
    return fp, tp, totals


def _candidates(circuit: Circuit, name: str, max_candidates: int) -> list:
    """The candidates of layer ``name``: its groups, then sub-clusters of its Ward tree."""
    keys, vectors = circuit.arrays.get(f"concept_keys/{name}"), circuit.arrays.get(f"concept_vectors/{name}")
    return layer_candidates(circuit.layer(name), keys, vectors, max_candidates)


def _rows(probe: AuditSample, class_layer: str, per_layer: list, quiet: bool) -> list[dict]:
    """One row per candidate of ``per_layer`` ([(layer, candidates)]), in that order: its
    ``measures`` with its neurons zeroed."""
    rows = []
    bar = progress(total=sum(len(c) for _, c in per_layer), desc="audit", quiet=quiet, unit="candidate")
    for layer, cands in per_layer:
        sets = [c["neurons"] for c in cands]
        for cand, out in zip(cands, probe.zeroed(class_layer, layer.name, sets)):
            rows.append(
                {
                    "layer": layer.name,
                    "kind": cand["kind"],
                    "group": cand["group"],
                    **measures(probe.ref, out, probe.t, probe.nf),
                    "neurons": [int(v) for v in cand["neurons"]],
                    "members": [[int(a), int(b)] for a, b in cand["members"]],
                    "exemplars": exemplars(layer, cand),
                }
            )
            bar.update(1)
    bar.close()
    return rows


def _annotate_best(probe: AuditSample, circuit: Circuit, fp_images: torch.Tensor, fp, rows: list) -> None:
    """The best rows (``rows``, ranked) get, for m = 1..``JOINT_TOP``, ``joint_fp_fixed`` /
    ``joint_tp_kept`` (with rows 1..m zeroed together), and the best ``FP_EXEMPLAR_ROWS``
    ``fp_exemplars``."""
    axes = _axes(probe.model, circuit.layer_names, probe.channel_axis)
    nf = probe.nf
    for m in range(1, min(JOINT_TOP, len(rows)) + 1):
        zero: dict = {}
        for r in rows[:m]:
            zero.setdefault(r["layer"], set()).update(r["neurons"])
        joint = {k: sorted(v) for k, v in zero.items()}
        out = logits(probe.model, probe.x, joint, batch_size=probe.batch_size, device=probe.device, axes=axes)
        still = (out.argmax(1) == probe.t).numpy()
        rows[m - 1]["joint_fp_fixed"] = float(1 - still[:nf].mean())
        rows[m - 1]["joint_tp_kept"] = float(still[nf:].mean())
    top = rows[:FP_EXEMPLAR_ROWS]
    fp_exemplars(circuit, probe.model, fp_images, fp, top, FP_EXEMPLARS, probe.batch_size, probe.device)


def _result(circuit: Circuit, settings: dict, totals: dict, fp, tp, ref: torch.Tensor, rows: list) -> dict:
    """``audit``'s result, in the order its JSON has always had (``ref``: the logits on the
    sampled false positives, then true positives)."""
    t = circuit.target
    base_fp, base_tp = ref[: len(fp), t], ref[len(fp) :, t]
    return {
        "target": t,
        "target_name": circuit.target_name,
        **settings,
        **totals,
        "n_false_positives": len(fp),
        "n_true_positives": int(len(tp)),
        "false_positive_indices": [int(i) for i in fp],
        "true_positive_indices": [int(i) for i in tp],
        "mean_target_logit": {"false_positives": float(base_fp.mean()), "true_positives": float(base_tp.mean())},
        "candidates": {k: sum(r["kind"] == k for r in rows) for k in KINDS},
        "groups": rows,
    }
