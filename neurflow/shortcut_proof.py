"""The planted-shortcut proof of docs/debugging.md: circuit + audit of the shortcut class (*Bag*)
on ``zoo:fashion-mnist-marked``, and what the top audited group is.

It sits above the pipeline and the audit; the zoo (``neurflow.zoo.shortcut``) only provides the
models, the data and the mark.  Used by ``scripts/shortcut_proof.py`` and the slow tests.
"""

from __future__ import annotations

import numpy as np

from .auditing import audit
from .datasets import load_data
from .models import load_model
from .pipeline import NeurFlow
from .provenance import Provenance
from .zoo.shortcut import SHORTCUT_CLASS, contains_mark, mark_effect

# the circuit settings of the proof (docs/debugging.md): those `neurflow demo` used when it was
# made (fixed tau 8 over every block), kept so that its figures stay reproducible
PROOF_LAYERS = ("head", "block4", "block3", "block2", "block1")
PROOF_SETTINGS = {"tau": 8, "top_k": 50, "ig_steps": 50, "granularities": (1.0, 0.75, 0.5)}
PROOF_DATA = "zoo:fashion-mnist-marked"


def audit_proof(model_name: str, out, quiet: bool = True, max_images: int = 256) -> dict:
    """Circuit + audit of ``model_name`` (a zoo model) for the shortcut class on
    ``zoo:fashion-mnist-marked``, and what the top audited group is: the share of its exemplars
    that show the mark, and what zeroing it does (``mark_effect``)."""
    loaded = load_model(f"zoo:{model_name}")
    data = load_data(PROOF_DATA)
    nf = NeurFlow(**PROOF_SETTINGS).fit(
        loaded.model,
        data.images,
        SHORTCUT_CLASS,
        list(PROOF_LAYERS),
        labels=data.labels,
        class_names=loaded.class_names,
        out=out,
        quiet=quiet,
        provenance=Provenance(model_spec=f"zoo:{model_name}", data_spec=PROOF_DATA),
    )
    c = nf.circuit_
    res = audit(c, loaded.model, data.images, data.labels, max_images=max_images, quiet=quiet)
    marked = set(int(i) for i in data.info["marked"])
    crop_image, crop_box = c.arrays["crop_image"], c.arrays["crop_box"]

    def mark_share(crops) -> float:
        return (
            float(np.mean([contains_mark(crop_box[k], int(crop_image[k]) in marked) for k in crops])) if crops else 0.0
        )

    for row in res["groups"]:
        layer = c.layer(row["layer"])
        row["mark_share"] = mark_share(layer.group_exemplars(layer.groups[row["group"]], 10**6))
    top = res["groups"][0]
    return {
        "model": f"zoo:{model_name}",
        "audit": res,
        "top": top,
        "before": mark_effect(loaded.model),
        "after": mark_effect(loaded.model, top["layer"], top["neurons"]),
        "circuit": {l.name: {"nodes": len(l.nodes), "groups": len(l.groups)} for l in c.layers},
    }
