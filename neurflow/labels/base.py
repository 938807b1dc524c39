"""What every labeler shares: the ``Label`` record, the run as a labeler sees it, and the caption
check (method.md section 5, with the published bugs fixed).

The check mixes a group's display exemplars with as many other crops of the run (drawn, seeded,
from the saved thumbnails that are not exemplars of the group), shuffles them, asks the labeler
which crops match the caption, and scores the answer *by position in the mixed list* (the
published code indexed the answer with neuron ids):

    precision = |picked and true| / |picked|      recall = |picked and true| / |true|

(recall is the paper's "accuracy").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..circuit import Group, Layer
from ..errors import NeurFlowError
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


class Labeler:
    """A labeling back-end.  Subclasses set ``name`` and implement ``label_group``; those that can
    judge which crops match a caption implement ``pick`` (enables the check), those that can
    caption relations implement ``label_relation``."""

    name = "base"
    can_check = False
    can_relate = False
    default_groups = "all"  # which groups `neurflow label` labels unless --groups says otherwise

    def label_group(self, run: Run, layer: Layer, group: Group) -> Label:
        raise NotImplementedError

    def pick(self, run: Run, text: str, crops: list[int]) -> list[int]:
        """Positions (0-based) in ``crops`` of the crops that match ``text``."""
        raise NotImplementedError

    def label_relation(self, run: Run, layer: Layer, group: Group, lower: Layer, feeders: list) -> dict:
        raise NotImplementedError


def caption_check(
    labeler: Labeler, run: Run, layer: Layer, group: Group, text: str, rng: np.random.RandomState, n_true: int = 5
) -> dict:
    true = layer.group_exemplars(group, n_true)
    own = set(layer.group_crops(group)) | set(true)
    pool = [c for c in run.thumbs if c not in own]
    n_random = min(len(true), len(pool))
    randoms = [int(c) for c in rng.choice(pool, size=n_random, replace=False)] if n_random else []
    mixed = true + randoms
    order = rng.permutation(len(mixed))
    mixed = [mixed[i] for i in order]
    picked_pos = sorted(set(int(p) for p in labeler.pick(run, text, mixed)))
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
        "shown": mixed,
        "picked": picked,
        "true": true,
    }
