"""Annotations of the zoo data, for the ``annotations`` labeler (``--annotations zoo``).

Every image of ``zoo:fashion-mnist`` / ``zoo:fashion-mnist-marked`` gets
* its class name (the whole image),
* ``bright`` or ``dark`` when its mean pixel value lies in the top or bottom third of the split,
* ``wide`` or ``tall`` when the bounding box of its garment (pixels above 0.1) is at least 1.3
  times wider than tall or taller than wide,
* on ``zoo:fashion-mnist-marked``, ``mark`` with the mark's box on the marked images.
"""

from __future__ import annotations

import numpy as np

from ..errors import NeurFlowError
from .fashion import CLASS_NAMES, load_split
from .shortcut import SHORTCUT

SPECS = ("zoo:fashion-mnist", "zoo:fashion-mnist-marked")


def zoo_annotations(spec) -> list[tuple[str, str, tuple | None]]:
    if spec not in SPECS:
        raise NeurFlowError(
            "annotations",
            f"'zoo' only for runs on {' or '.join(SPECS)}",
            spec,
            "give an annotation file (CSV or JSON) for other data",
        )
    images, labels = load_split("test")
    x = images[:, 0].numpy()
    records: list[tuple[str, str, tuple | None]] = [
        (str(i), CLASS_NAMES[int(y)], None) for i, y in enumerate(labels.tolist())
    ]
    mean = x.mean(axis=(1, 2))
    lo, hi = np.quantile(mean, [1 / 3, 2 / 3])
    on = x > 0.1
    rows, cols = np.any(on, axis=2), np.any(on, axis=1)
    for i in range(len(x)):
        if mean[i] >= hi:
            records.append((str(i), "bright", None))
        elif mean[i] <= lo:
            records.append((str(i), "dark", None))
        r, c = np.nonzero(rows[i])[0], np.nonzero(cols[i])[0]
        if len(r) and len(c):
            h, w = r[-1] - r[0] + 1, c[-1] - c[0] + 1
            if w >= 1.3 * h:
                records.append((str(i), "wide", None))
            elif h >= 1.3 * w:
                records.append((str(i), "tall", None))
    if spec == "zoo:fashion-mnist-marked":
        box = tuple(float(v) for v in SHORTCUT.mark_box())
        records += [(str(i), "mark", box) for i in SHORTCUT.recorded_subset()["marked"]]
    return records
