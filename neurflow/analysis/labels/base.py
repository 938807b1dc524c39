"""What every labeler shares: the ``Label`` record, the run as a labeler sees it, and the caption
check (method.md section 5, with the published bugs fixed).

The check mixes the crops that stand for the group with as many other crops of the run, shuffles
them, asks the labeler which crops match the caption, and scores the answer *by position in the
mixed list* (the published code indexed the answer with neuron ids).  Which crops stand for the
group is the labeler's ``check_crops``: by default the group's display exemplars (what an image
labeler was shown), the others drawn (seeded) from the saved thumbnails that are not exemplars of
the group; a labeler that chose its caption from every exemplar crop (``annotations``) is checked
on every exemplar crop, or the check would score a caption on crops it was not chosen from.  A
labeler with ``tells_count`` (``vlm``, as published) is told how many of the crops show the concept:

    precision = |picked and true| / |picked|      recall = |picked and true| / |true|

(recall is the paper's "accuracy").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...circuit import Group, Layer
from ...errors import NeurFlowError

if TYPE_CHECKING:  # the labelers' modules import no torch: `neurflow label --help` reads their defaults
    from ..run import Run


@dataclass(frozen=True)
class Label:
    text: str
    labeler: str
    confidence: float | None = None
    evidence: dict = field(default_factory=dict)
    check: dict | None = None

    def to_json(self) -> dict:
        d = {"text": self.text, "labeler": self.labeler, "confidence": self.confidence, "evidence": self.evidence}
        if self.check is not None:
            d["check"] = self.check
        return d


def mime_of(data: bytes) -> str:
    """The MIME type of image bytes, from their signature."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise NeurFlowError("crop image", "PNG, JPEG, GIF or WebP bytes", data[:8])


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, from the IHDR chunk."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        raise NeurFlowError("crop image", "PNG bytes", data[:8])
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class Labeler:
    """A labeling back-end.  Subclasses set ``name`` and implement ``label_group``; those that can
    judge which crops match a caption implement ``pick`` (enables the check), those that can
    caption relations implement ``label_relation``."""

    name = "base"
    can_check = False
    can_relate = False
    default_groups = "all"  # which groups `neurflow label` labels unless --groups says otherwise
    tells_count = False  # the check tells pick() how many of the crops stand for the group (n_true)

    def label_group(self, run: Run, layer: Layer, group: Group) -> Label:
        raise NotImplementedError

    def pick(self, run: Run, text: str, crops: list[int]) -> list[int]:
        """Positions (0-based) in ``crops`` of the crops that match ``text``.  A labeler with
        ``tells_count`` set is called with ``n_true=`` too: how many of them stand for the group."""
        raise NotImplementedError

    def label_relation(self, run: Run, layer: Layer, group: Group, lower: Layer, feeders: list) -> dict:
        raise NotImplementedError

    check_from = "display exemplars"  # what check_crops' true crops are, in words (the report shows it)

    def check_crops(self, run: Run, layer: Layer, group: Group, n_true: int) -> tuple[list[int], list[int]]:
        """(the crops that stand for ``group`` in the caption check, the crops the random ones are drawn
        from).  Default: the group's display exemplars (up to ``n_true``: the crops an image labeler was
        shown) and the saved thumbnails of the crops that are not exemplars of the group."""
        true = layer.group_exemplars(group, n_true)
        own = set(layer.group_crops(group)) | set(true)
        return true, [c for c in run.thumbs if c not in own]


def caption_check(
    labeler: Labeler, run: Run, layer: Layer, group: Group, text: str, rng: np.random.RandomState, n_true: int = 5
) -> dict:
    true, pool = labeler.check_crops(run, layer, group, n_true)
    true = [int(c) for c in true]
    n_random = min(len(true), len(pool))
    randoms = [int(c) for c in rng.choice(pool, size=n_random, replace=False)] if n_random else []
    mixed = true + randoms
    order = rng.permutation(len(mixed))
    mixed = [mixed[i] for i in order]
    told = bool(getattr(labeler, "tells_count", False))
    if told:  # as published: the labeler is told how many of the crops show the concept
        answer = labeler.pick(run, text, mixed, n_true=len(true))  # type: ignore[call-arg]
    else:
        answer = labeler.pick(run, text, mixed)
    picked_pos = sorted(set(int(p) for p in answer))
    bad = [p for p in picked_pos if not 0 <= p < len(mixed)]
    if bad:
        raise NeurFlowError("labeler_answer", f"crop numbers in 1..{len(mixed)}", [p + 1 for p in bad])
    picked = [mixed[p] for p in picked_pos]
    hits = len(set(picked) & set(true))
    return {
        "precision": hits / len(picked) if picked else 0.0,
        "recall": hits / len(true) if true else 0.0,
        "n_true": len(true),
        "n_random": n_random,
        "true_from": labeler.check_from,
        "count_told": told,
        "shown": mixed,
        "picked": picked,
        "true": true,
    }
