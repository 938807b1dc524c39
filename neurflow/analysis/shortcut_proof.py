"""The planted-shortcut proofs of docs/debugging.md: circuit + audit of the planted class on its
marked test split, and what the audit's top rows are.

Two proofs, made the same way: ``zoo:fashion-cnn-shortcut`` (a white square in a corner of most
*Bag* images; ``zoo:fashion-cnn`` on the same data is the control) and ``zoo:fashion-cnn-entangled``
(a checkerboard in the middle of 90 % of the *Shirt* images, overlapping the garment).  Each
reports the audit's top row (``score``: margin removed from the false positives minus from the
true positives, over groups, sub-groups and neurons) beside the top of the earlier ranking
(``old_top``: layer groups only, by ``logit_score``), and what zeroing either does to the
mark-induced predictions (``mark_effect``).

It sits above the pipeline and the audit; the zoo (``neurflow.zoo.shortcut``) only provides the
models, the data and the marks.  Used by ``scripts/shortcut_proof.py`` and the slow tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..method import NeurFlow
from ..method.probe import logits
from ..provenance import Provenance
from ..sources.datasets import load_data
from ..sources.models import load_model
from ..zoo.fashion import load_split
from ..zoo.shortcut import ENTANGLED, SHORTCUT, Plant
from .audit import audit
from .candidates import exemplars

# the circuit settings of the proofs (docs/debugging.md): those `neurflow demo` used when the first
# was made (fixed tau 8 over every block), kept so that its figures stay reproducible
PROOF_LAYERS = ("head", "block4", "block3", "block2", "block1")
PROOF_SETTINGS: dict[str, Any] = {"tau": 8, "top_k": 50, "ig_steps": 50, "granularities": (1.0, 0.75, 0.5)}
PLANTS = {"shortcut": SHORTCUT, "entangled": ENTANGLED}


def group_only_ranking(rows: list, names: list) -> list:
    """The audit's ranking before the candidates: layer groups only, by ``logit_score``."""
    groups = [r for r in rows if r["kind"] == "group"]
    return sorted(groups, key=lambda r: (-round(r["logit_score"], 9), names.index(r["layer"]), r["group"]))


def audit_proof(model_name: str, out, quiet: bool = True, max_images: int = 256, plant: Plant = SHORTCUT) -> dict:
    """Circuit + audit of ``model_name`` (a zoo model) for ``plant``'s class on its marked test
    split; for the top row of the audit (``top``) and of the earlier group-only ranking
    (``old_top``): the share of its exemplars and of its false-positive exemplars that show the
    mark, and what zeroing it does (``after`` / ``old_after``, against ``before``)."""
    loaded = load_model(f"zoo:{model_name}")
    data = load_data(plant.data)
    nf = NeurFlow(**PROOF_SETTINGS).fit_loaded(
        loaded,
        data,
        plant.target,
        list(PROOF_LAYERS),
        out=out,
        quiet=quiet,
        provenance=Provenance(model_spec=f"zoo:{model_name}", data_spec=plant.data),
    )
    c = nf.circuit_
    res = audit(c, loaded.model, data.images, data.labels, max_images=max_images, quiet=quiet)
    marked = set(int(i) for i in data.info["marked"])
    crop_image, crop_box = c.arrays["crop_image"], c.arrays["crop_box"]

    def mark_share(crops) -> float:
        return (
            float(np.mean([plant.contains_mark(crop_box[k], int(crop_image[k]) in marked) for k in crops]))
            if crops
            else 0.0
        )

    rows = res["groups"]
    old = group_only_ranking(rows, [layer.name for layer in c.layers])
    for row in rows[:10] + old[:3]:
        layer = c.layer(row["layer"])
        cand = {"group": row["group"], "members": [tuple(m) for m in row["members"]], "neurons": tuple(row["neurons"])}
        row["mark_share"] = mark_share(exemplars(layer, cand, 10**6))
        if "fp_exemplars" in row:
            fx = row["fp_exemplars"]
            row["fp_mark_share"] = float(np.mean([plant.contains_mark(e["box"], e["index"] in marked) for e in fx]))
    top, old_top = rows[0], old[0]
    return {
        "model": f"zoo:{model_name}",
        "data": plant.data,
        "audit": res,
        "top": top,
        "old_top": old_top,
        "old_second_logit_score": old[1]["logit_score"] if len(old) > 1 else None,
        "before": mark_effect(plant, loaded.model),
        "after": mark_effect(plant, loaded.model, top["layer"], top["neurons"]),
        "old_after": mark_effect(plant, loaded.model, old_top["layer"], old_top["neurons"]),
        "circuit": {l.name: {"nodes": len(l.nodes), "groups": len(l.groups)} for l in c.layers},
    }


def mark_effect(plant: Plant, model, layer: str | None = None, neurons=(), batch_size: int = 1000) -> dict:
    """How much the model leans on ``plant``'s mark, optionally with ``neurons`` of ``layer`` zeroed,
    measured on the 10,000 test images:

    * ``marked_others_to_target``: share of the other classes' images predicted as the
      target once the mark is stamped on them;
    * ``clean_others_to_target``: the same without the mark;
    * ``mark_logit_shift``: mean rise of the target's logit on the other classes' images
      when the mark is stamped (marked minus clean, same images);
    * ``clean_target_recall``: share of the clean target-class images predicted as it.
    """
    x, y = load_split("test")
    t = plant.target
    other = y != t
    zero = {layer: sorted({int(n) for n in neurons})} if layer is not None else None
    clean = logits(model, x, zero=zero, batch_size=batch_size)
    marked = logits(model, plant.stamp(x[other]), zero=zero, batch_size=batch_size)
    return {
        "marked_others_to_target": float((marked.argmax(1) == t).float().mean()),
        "clean_others_to_target": float((clean[other].argmax(1) == t).float().mean()),
        "mark_logit_shift": float((marked[:, t] - clean[other][:, t]).mean()),
        "clean_target_recall": float((clean[~other].argmax(1) == t).float().mean()),
    }
