"""``neurflow demo``: the whole pipeline on an embedded model and real data, offline (``DEMOS``;
docs/zoo.md says why these settings).

``fashion-cnn`` (default): zoo:fashion-cnn on the 10,000 Fashion-MNIST test images, class
*Sneaker*, the paper's settings adapted to 28-pixel images:

* granularities 1, 0.75, 0.5 (not 1, 0.5, 0.25): a quarter of 28 px is a 7-pixel crop, too small
  to show a recognisable part of a garment; three-quarter and half crops (21 and 14 px, 14 crops
  per image) show parts such as a sole, a heel or a collar;
* the paper's adaptive rule with eps 0.2 and tau 8 as its cap (not a fixed tau 16): with a fixed
  tau the node sets saturate going down, so masking the circuit and masking as many random
  neurons destroy the class alike; the adaptive rule keeps every layer's node set selective;
* layers head, block4, block3 with block2 as the input layer: block1's generic edge and contrast
  filters are shared by everything, so a circuit there is not selective by nature;
* k 50, 50 IG steps, at most 5 sub-concepts, L1 edge weights: as in the paper; batch size 256
  (28-px crops are small; a runtime setting that never changes the circuit).

``efficientnet-lite0``: zoo:efficientnet-lite0 (ImageNet-pretrained) on zoo:photos, a reduced
circuit: layers net._fc, net._conv_head, net._blocks.15 with net._blocks.14 as the input layer,
tau 8, k 20, 50 IG steps and the paper's granularities.  Only the photos predicted as the target
are used (by default *espresso*: scikit-image's coffee cup), so it is a few-image illustration,
not an explanation of the class.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import NeurFlowConfig
from .errors import unknown_name
from .provenance import Provenance


@dataclass(frozen=True)
class Demo:
    model: str
    data: str
    target: str
    layers: tuple
    settings: dict = field(default_factory=dict)
    note: str = ""


DEMOS = {
    "fashion-cnn": Demo(
        "zoo:fashion-cnn",
        "zoo:fashion-mnist",
        "Sneaker",
        ("head", "block4", "block3", "block2"),
        # the paper's adaptive rule keeps each node's core set selective (tau 8 the cap): see docs/zoo.md
        # (batch 256: 28-px crops are small; a runtime setting that never changes the circuit)
        {
            "tau": 8,
            "adaptive_eps": 0.2,
            "top_k": 50,
            "ig_steps": 50,
            "granularities": (1.0, 0.75, 0.5),
            "batch_size": 256,
        },  # fmt: skip
    ),
    "efficientnet-lite0": Demo(
        "zoo:efficientnet-lite0",
        "zoo:photos",
        "espresso",
        ("net._fc", "net._conv_head", "net._blocks.15", "net._blocks.14"),
        {"tau": 8, "top_k": 20, "ig_steps": 50, "granularities": (1.0, 0.5, 0.25)},
        "few-image illustration: only the offline photos predicted as the target "
        "are analysed; not an explanation of the ImageNet class",
    ),
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "class"


def run_demo(
    model: str = "fashion-cnn", target=None, out=None, quiet: bool = False, overwrite: bool = False, **runtime
):
    """Run a demo; returns (fitted NeurFlow, output directory, wall seconds, Demo).  ``runtime``:
    settings that do not change the circuit (``device``, ``threads``, ``batch_size``, ``engine``)."""
    from .method import NeurFlow  # lazy: the parser reads DEMOS without torch
    from .sources.datasets import load_data  # lazy: the parser reads DEMOS without torch
    from .sources.models import load_model  # lazy: the parser reads DEMOS without torch

    name = model[4:] if model.startswith("zoo:") else model
    if name not in DEMOS:
        raise unknown_name("model", name, list(DEMOS))
    demo = DEMOS[name]
    target = demo.target if target is None else target
    out = Path(out) if out else Path("runs") / f"demo-{name}-{slug(target)}"
    t0 = time.perf_counter()
    loaded = load_model(demo.model)
    data = load_data(demo.data)
    cfg = NeurFlowConfig(**{**demo.settings, **{k: v for k, v in runtime.items() if v is not None}})
    prov = Provenance(
        model_spec=demo.model,
        data_spec=demo.data,
        transform=data.transform,
        demo=name,
        note=demo.note,
        files=tuple(data.files) if data.files else None,
    )
    nf = NeurFlow(cfg).fit_loaded(
        loaded, data, target, list(demo.layers), out=out, overwrite=overwrite, quiet=quiet, provenance=prov
    )
    return nf, out, time.perf_counter() - t0, demo
