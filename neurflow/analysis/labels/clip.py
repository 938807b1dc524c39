"""``clip``: CLIP-Dissect-style labels from a word list, when CLIP and local weights are present.

Back-ends, tried in this order: ``open_clip`` (``--clip-model`` architecture, e.g. ``ViT-B-32``, and
``--clip-weights`` a local checkpoint file) or ``transformers`` (``--clip-weights`` a local model
folder).  Nothing is downloaded.  When neither package or no weights are present the labeler says
so in one line and does nothing else.

Scoring (after CLIP-Dissect, Oikarinen & Weng 2023, with the group's exemplars as the highly
activating probe set): with P[i, c] = softmax over the words of (image i . word c) / T, a word's
score is ``log mean_{i in exemplars} P[i, c] - log mean_{i in reference} P[i, c]``, the reference
being every crop thumbnail of the run: a word wins when it describes the group's exemplars much
better than the run's crops in general.  ``confidence`` is the mean P[i, best] over the exemplars.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import NeurFlowError
from .base import Label, Labeler

if TYPE_CHECKING:
    from ..run import Run

TEMPERATURE = 0.01
DEFAULT_WORDS = (
    "red orange yellow green blue purple pink brown black white grey gold silver "
    "striped spotted checkered dotted plaid knitted woven furry smooth shiny glossy matte rough wrinkled "
    "edge corner line curve circle square triangle stripe grid dot hole fold seam zipper button collar "
    "sleeve strap handle buckle lace heel sole toe logo text pattern texture fabric leather metal "
    "wood plastic glass water sky grass tree leaf flower fur feather scale eye face nose mouth ear "
    "hand leg wheel window door roof cup bowl plate bottle shoe bag shirt dress coat trousers sandal "
    "boot sneaker animal dog cat bird fish insect car building food fruit bright dark blurry"
).split()


def dissect_scores(
    group_emb: np.ndarray, ref_emb: np.ndarray, text_emb: np.ndarray, temperature: float = TEMPERATURE
) -> tuple[np.ndarray, np.ndarray]:
    """(score per word, mean probability per word over the group) from L2-normalised embeddings."""

    def probs(e):
        logits = e @ text_emb.T / temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    pg, pr = probs(group_emb).mean(axis=0), probs(ref_emb).mean(axis=0)
    return np.log(pg + 1e-12) - np.log(pr + 1e-12), pg


def _available() -> list[str]:
    return [m for m in ("open_clip", "transformers") if importlib.util.find_spec(m) is not None]


class _OpenClip:
    def __init__(self, arch: str, weights: str):
        import open_clip
        import torch

        self.torch = torch
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)

    def images(self, pngs: list[bytes]) -> np.ndarray:
        from PIL import Image

        x = self.torch.stack([self.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs])
        with self.torch.no_grad():
            e = self.model.encode_image(x).float()
        return (e / e.norm(dim=-1, keepdim=True)).numpy()

    def texts(self, words: list[str]) -> np.ndarray:
        with self.torch.no_grad():
            e = self.model.encode_text(self.tokenizer([f"a photo of {w}" for w in words])).float()
        return (e / e.norm(dim=-1, keepdim=True)).numpy()


class _HFClip:
    def __init__(self, folder: str):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def images(self, pngs: list[bytes]) -> np.ndarray:
        from PIL import Image

        inputs = self.processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in pngs], return_tensors="pt")
        with self.torch.no_grad():
            e = self.model.get_image_features(**inputs).float()
        return (e / e.norm(dim=-1, keepdim=True)).numpy()

    def texts(self, words: list[str]) -> np.ndarray:
        inputs = self.processor(text=[f"a photo of {w}" for w in words], return_tensors="pt", padding=True)
        with self.torch.no_grad():
            e = self.model.get_text_features(**inputs).float()
        return (e / e.norm(dim=-1, keepdim=True)).numpy()


def load_encoder(arch: str | None, weights: str | None):
    found = _available()
    if not found:
        raise NeurFlowError(
            "labeler",
            "open_clip or transformers installed for the clip labeler",
            "clip",
            "neither is installed (pip install open_clip_torch), and local CLIP weights are "
            "needed ({p:clip_weights}); nothing was labelled",
        )
    if not weights or not Path(weights).exists():
        raise NeurFlowError(
            "clip_weights",
            "local CLIP weights (a checkpoint file for open_clip, a model folder for transformers)",
            weights,
            "nothing is downloaded; nothing was labelled",
        )
    if "open_clip" in found and Path(weights).is_file():
        return _OpenClip(arch or "ViT-B-32", weights)
    if "transformers" in found and Path(weights).is_dir():
        return _HFClip(weights)
    raise NeurFlowError(
        "clip_weights",
        "a checkpoint file (open_clip) or a model folder (transformers)",
        weights,
        f"installed: {', '.join(found)}; nothing was labelled",
    )


class ClipLabeler(Labeler):
    name = "clip"
    can_check = True

    def __init__(self, clip_model: str | None = None, clip_weights: str | None = None, words=None, encoder=None):
        self.encoder = encoder if encoder is not None else load_encoder(clip_model, clip_weights)
        if words is not None and not isinstance(words, (list, tuple)):
            p = Path(words)
            if not p.is_file():
                raise NeurFlowError("words", "a text file with one word or phrase per line", str(words))
            words = [w.strip() for w in p.read_text(encoding="utf-8").splitlines() if w.strip()]
        self.words = list(words or DEFAULT_WORDS)
        if not self.words:
            raise NeurFlowError("words", "at least one word", words)
        self._text = None
        self._ref = None

    def _prepare(self, run: Run):
        if self._text is None:
            self._text = self.encoder.texts(self.words)
            self._ref = self.encoder.images([run.png(c) for c in run.thumbs]) if run.thumbs else None
        return self._text, self._ref

    def label_group(self, run: Run, layer, group) -> Label:
        text, ref = self._prepare(run)
        crops = layer.group_exemplars(group, 10)
        emb = self.encoder.images([run.png(c) for c in crops])
        scores, pg = dissect_scores(emb, ref if ref is not None else emb, text)
        order = np.argsort(-scores, kind="stable")
        best = int(order[0])
        return Label(
            self.words[best],
            self.name,
            float(pg[best]),
            {"crops": crops, "top": [{"word": self.words[int(i)], "score": float(scores[int(i)])} for i in order[:5]]},
        )

    def pick(self, run: Run, text: str, crops: list[int]) -> list[int]:
        """The half of ``crops`` most similar to ``text`` (the check shows as many true as random)."""
        t = self.encoder.texts([text])[0]
        sims = self.encoder.images([run.png(c) for c in crops]) @ t
        return sorted(int(i) for i in np.argsort(-sims, kind="stable")[: len(crops) // 2])
