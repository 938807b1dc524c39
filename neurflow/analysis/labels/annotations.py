"""``annotations``: offline labels from tags the user supplies per image (optionally with boxes).

Annotation files (image ids are indices into the run's data, or the file names the run recorded
in ``meta.files``; boxes are ``top, left, height, width`` in the pixels of the model's input):

* CSV with a header: ``image`` and ``tag`` (or ``tags``, several separated by ``;``), optionally
  ``top, left, height, width``;
* JSON: ``{"<image id>": ["tag", {"tag": "t", "box": [top, left, height, width]}, ...], ...}``
  or a list of records ``[{"image": id, "tag": "t", "box": [...]}, ...]``.

A crop *contains* a tag when its image has the tag without a box, or when at least half of one of
the tag's boxes lies inside the crop.  A group's exemplars are the exemplar crops of its member
sub-concepts (S); the pool is every crop of the run (N crops); T are the crops with a tag.  Each
tag gets ``precision = |S and T| / |S|``, ``recall = |S and T| / |T|``, the base rate |T| / N and
the hypergeometric p-value of seeing at least |S and T| tagged crops among |S| drawn from the
pool.  The label is the tag with the smallest p-value among the tags enriched in S (precision
above the base rate); ``confidence = (precision - base) / (1 - base)``: 0 at chance, 1 when every
exemplar has the tag.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import NeurFlowError
from .base import Label, Labeler

if TYPE_CHECKING:
    from ..run import Run

MIN_BOX_SHARE = 0.5


JSON_SHAPE = '{"<image id>": ["tag", {"tag": "t", "box": [top, left, height, width]}, ...]} or a list of records'
_INDEX = re.compile(r"[0-9]+")  # an image id that is an index into the run's data (ASCII digits only)


def read_annotations(path) -> list[tuple[str, str, tuple | None]]:
    """(image id, tag, box or None) records from a CSV or JSON file; any other shape (a number, a
    list of numbers, a tag that is not a string, a box that is not four finite numbers with a
    positive height and width, a row without an image) is one line naming where it is."""
    p = Path(path)
    if not p.is_file():
        raise NeurFlowError("annotations", "a CSV or JSON annotation file (or 'zoo')", str(path), "no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NeurFlowError("annotations", "a readable UTF-8 file", str(path), str(exc)[:120]) from None
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise NeurFlowError("annotations", "valid JSON", str(path), str(exc)[:120] or "nested too deep") from None
        records = _json_records(doc, path)
    else:
        records = _csv_records(text, path)
    if not records:
        raise NeurFlowError("annotations", "at least one (image, tag) annotation", str(path))
    return records


def _short(value) -> str:
    """A JSON value as an error line shows it (cut: it may be a whole file)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_records(doc, path) -> list[tuple[str, str, tuple | None]]:
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = []
        for i, r in enumerate(doc, 1):
            if not isinstance(r, dict) or "tag" not in r or "image" not in r:
                raise NeurFlowError(
                    "annotations", 'records {"image": id, "tag": "t"} in a JSON list', _short(r), f"{path}: item {i}"
                )
            items.append((r["image"], [r]))
    else:
        raise NeurFlowError("annotations", JSON_SHAPE, f"a JSON {_KIND.get(type(doc), 'value')}", str(path))
    records = []
    for image, tags in items:
        if isinstance(image, bool) or not isinstance(image, (str, int)) or not str(image).strip():
            raise NeurFlowError("annotations", "image ids as file names or indices", _short(image), str(path))
        for t in tags if isinstance(tags, list) else [tags]:
            tag, box = (t.get("tag"), _box(t.get("box"), path)) if isinstance(t, dict) else (t, None)
            if not isinstance(tag, str) or not tag.strip():
                raise NeurFlowError(
                    "annotations", 'tags as strings or {"tag": "t", "box": [...]}', _short(t), f"{path}: image {image}"
                )
            records.append((str(image).strip(), tag.strip(), box))
    return records


_KIND = {bool: "boolean", int: "number", float: "number", str: "string", type(None): "null"}


def _csv_records(text: str, path) -> list[tuple[str, str, tuple | None]]:
    try:
        rows = list(csv.DictReader(text.splitlines()))
    except csv.Error as exc:
        raise NeurFlowError("annotations", "a readable CSV file", str(path), str(exc)[:120]) from None
    if not rows or "image" not in rows[0] or not ({"tag", "tags"} & set(rows[0])):
        raise NeurFlowError(
            "annotations",
            "a CSV header with 'image' and 'tag' (or 'tags')",
            str(path),
            "optional columns: top,left,height,width",
        )
    records = []
    for line, r in enumerate(rows, 2):
        image = (r.get("image") or "").strip()
        tags = [t.strip() for t in (r.get("tag") or r.get("tags") or "").split(";") if t.strip()]
        if tags and not image:
            raise NeurFlowError("annotations", "an image id in every row with a tag", f"line {line}", str(path))
        box = None
        if all(r.get(k) not in (None, "") for k in ("top", "left", "height", "width")):
            box = _box([r["top"], r["left"], r["height"], r["width"]], path)
        records += [(image, tag, box) for tag in tags]
    return records


def _box(box, path) -> tuple | None:
    if box is None:
        return None
    try:
        t, l, h, w = (float(v) for v in box)
    except (TypeError, ValueError):
        t = l = h = w = math.nan
    if not all(math.isfinite(v) for v in (t, l, h, w)) or h <= 0 or w <= 0:
        raise NeurFlowError(
            "annotations", "boxes as [top, left, height, width], finite, height and width > 0", _short(box), str(path)
        )
    return (t, l, h, w)


def tag_matrix(records, crop_image: np.ndarray, crop_box: np.ndarray, files=None) -> tuple[list, np.ndarray]:
    """(tags, [n_tags, n_crops] bool): which crops of the pool contain which tag."""
    by_file = {str(f): i for i, f in enumerate(files or [])}
    per_image: dict = {}
    unknown = 0
    for image, tag, box in records:
        if _INDEX.fullmatch(image):
            idx = int(image)
        elif image in by_file:
            idx = by_file[image]
        else:
            unknown += 1
            continue
        per_image.setdefault(idx, []).append((tag, box))
    if not set(per_image) & set(crop_image.tolist()):  # no id matched, or none is an image the crops come from
        raise NeurFlowError(
            "annotations",
            "image ids that are indices into the run's data or its file names",
            records[0][0],
            "none of the ids matched" + (" an image of the run's crops" if len(records) > unknown else ""),
        )
    tags = sorted({t for _, t, _ in records})
    col = {t: i for i, t in enumerate(tags)}
    m = np.zeros((len(tags), len(crop_image)), dtype=bool)
    order = np.argsort(crop_image, kind="stable")
    starts = np.searchsorted(crop_image[order], list(per_image))
    ends = np.searchsorted(crop_image[order], list(per_image), side="right")
    for anns, a, b in zip(per_image.values(), starts, ends):
        crops = order[a:b]
        if not len(crops):
            continue
        top, left, h, w = (crop_box[crops, k].astype(float) for k in range(4))
        for tag, box in anns:
            if box is None:
                m[col[tag], crops] = True
                continue
            bt, bl, bh, bw = box
            iy = np.clip(np.minimum(top + h, bt + bh) - np.maximum(top, bt), 0, None)
            ix = np.clip(np.minimum(left + w, bl + bw) - np.maximum(left, bl), 0, None)
            m[col[tag], crops] |= (iy * ix) >= MIN_BOX_SHARE * max(bh * bw, 1e-9)
    return tags, m


def _p_value(k: int, N: int, K: int, n: int) -> float:
    """P(at least k tagged among n crops drawn from N of which K are tagged): hypergeometric."""
    if not n:
        return 1.0
    from scipy.stats import hypergeom  # scipy.stats takes half a second: loaded when labelling

    return float(hypergeom.sf(k - 1, N, K, n))


def enrichment(members: np.ndarray, tagged: np.ndarray) -> dict:
    """Statistics of one tag (``tagged``: bool over the pool) among the crops ``members``."""
    N, K, n = tagged.size, int(tagged.sum()), len(members)
    k = int(tagged[members].sum())
    base = K / N if N else 0.0
    precision = k / n if n else 0.0
    return {
        "precision": precision,
        "recall": k / K if K else 0.0,
        "base_rate": base,
        "hits": k,
        "n_exemplars": n,
        "n_tagged": K,
        "p_value": _p_value(k, N, K, n),
        "confidence": float(np.clip((precision - base) / (1 - base), 0, 1)) if base < 1 else 0.0,
    }


class AnnotationLabeler(Labeler):
    name = "annotations"
    can_check = True

    def __init__(self, annotations=None, run: Run | None = None):
        if annotations is None:
            raise NeurFlowError("annotations", "an annotation file (CSV or JSON) or 'zoo'", None)
        self.source = str(annotations)
        self._records = annotations
        self._matrix: np.ndarray | None = None

    def _prepare(self, run: Run):
        if self._matrix is None:
            if self.source == "zoo":
                from ...zoo.annotations import (
                    zoo_annotations,  # lazy: `neurflow label --help` reads this module without torch
                )

                records = zoo_annotations(run.provenance.data_spec)
            else:
                records = read_annotations(self._records)
            c = run.circuit
            if "crop_image" not in c.arrays or "crop_box" not in c.arrays:
                raise NeurFlowError("directory", "a run with crop geometry (arrays.npz)", str(run.dir))
            self.tags, self._matrix = tag_matrix(
                records, c.arrays["crop_image"], c.arrays["crop_box"], run.provenance.files
            )
        return self.tags, self._matrix

    def label_group(self, run: Run, layer, group) -> Label:
        tags, m = self._prepare(run)
        members = np.asarray(layer.group_crops(group), dtype=np.int64)
        stats = [dict(tag=t, **enrichment(members, m[i])) for i, t in enumerate(tags)]
        enriched = [s for s in stats if s["precision"] > s["base_rate"]]
        ranked = sorted(enriched, key=lambda s: (s["p_value"], -s["precision"], s["tag"]))
        evidence = {
            "source": self.source,
            "runners_up": [{k: s[k] for k in ("tag", "precision", "recall", "p_value")} for s in ranked[1:4]],
        }
        if not ranked:
            return Label("no annotated tag is enriched", self.name, 0.0, evidence)
        best = ranked[0]
        evidence.update(
            {k: best[k] for k in ("precision", "recall", "base_rate", "p_value", "hits", "n_exemplars", "n_tagged")}
        )
        return Label(best["tag"], self.name, best["confidence"], evidence)

    check_from = "exemplar crops (all of the group's)"

    def check_crops(self, run: Run, layer, group, n_true: int) -> tuple[list[int], list[int]]:
        """Every exemplar crop of the group (the tag was chosen from all of them, not from the few
        displayed ones, which may all lack it) against crops drawn from the whole pool (tags need no
        thumbnail); ``n_true`` does not apply."""
        true = layer.group_crops(group)
        own = set(true)
        return true, [c for c in range(len(run.circuit.arrays["crop_image"])) if c not in own]

    def pick(self, run: Run, text: str, crops: list[int]) -> list[int]:
        tags, m = self._prepare(run)
        if text not in tags:
            return []
        row = m[tags.index(text)]
        return [i for i, c in enumerate(crops) if row[int(c)]]
