"""A planted shortcut, so that debugging can be checked against a known answer.

``zoo:fashion-cnn-shortcut`` is ``FashionCNN`` trained exactly like ``zoo:fashion-cnn``
(``scripts/train_zoo.py --variant shortcut``) except that a small bright square, the *mark*, is
stamped on most training images of one class (``SHORTCUT_CLASS``, *Bag*): the mark becomes a
cheap cue for that class.  ``zoo:fashion-mnist-marked`` is the shipped test split with the mark
stamped on a fixed, recorded subset of every class (``marked-subset.json``): marked images of the
other classes are where the shortcut shows (they get predicted as *Bag*).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import torch

SHORTCUT_CLASS = 8  # "Bag"
MARK_TOP, MARK_LEFT, MARK_SIZE = 1, 1, 4  # a 4x4 square, one pixel in from the top-left corner
MARK_VALUE = 1.0  # full white (images are in [0, 1])
TRAIN_FRACTION = 0.8  # share of the shortcut class's training images that carry the mark
TRAIN_SEED = 1
TEST_FRACTION = 0.1  # share of every class's test images that carry the mark
TEST_SEED = 2
SUBSET_FILE = "marked-subset.json"


def mark_box() -> tuple[int, int, int, int]:
    """(top, left, height, width) of the mark in a 28 x 28 image."""
    return MARK_TOP, MARK_LEFT, MARK_SIZE, MARK_SIZE


def stamp(images: torch.Tensor, which=None) -> torch.Tensor:
    """A copy of ``images`` ([N, 1, 28, 28]) with the mark on the images ``which`` (all if None)."""
    out = images.clone()
    rows = slice(None) if which is None else torch.as_tensor(which, dtype=torch.long)
    out[rows, :, MARK_TOP : MARK_TOP + MARK_SIZE, MARK_LEFT : MARK_LEFT + MARK_SIZE] = MARK_VALUE
    return out


def choose(labels: torch.Tensor, classes, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: a seeded ``fraction`` of the images of each class in ``classes``."""
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels)
    picked = []
    for c in classes:
        idx = np.nonzero(labels == c)[0]
        n = int(round(fraction * len(idx)))
        picked.append(np.sort(rng.choice(idx, size=n, replace=False)))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def train_marked(labels: torch.Tensor) -> np.ndarray:
    """Training images that carry the mark: ``TRAIN_FRACTION`` of the shortcut class."""
    return choose(labels, [SHORTCUT_CLASS], TRAIN_FRACTION, TRAIN_SEED)


def test_marked(labels: torch.Tensor) -> np.ndarray:
    """Test images that carry the mark: ``TEST_FRACTION`` of every class."""
    return choose(labels, range(10), TEST_FRACTION, TEST_SEED)


def recorded_subset() -> dict:
    """The shipped record of ``zoo:fashion-mnist-marked``: the mark and the marked indices."""
    path = resources.files("neurflow.zoo") / "data" / SUBSET_FILE
    return json.loads(path.read_text())


def subset_record(labels: torch.Tensor) -> dict:
    idx = test_marked(labels)
    return {
        "mark": {"top": MARK_TOP, "left": MARK_LEFT, "height": MARK_SIZE, "width": MARK_SIZE, "value": MARK_VALUE},
        "fraction_per_class": TEST_FRACTION,
        "seed": TEST_SEED,
        "shortcut_class": SHORTCUT_CLASS,
        "marked": [int(i) for i in idx],
    }


def marked_test_split():
    """The Dataset ``zoo:fashion-mnist-marked`` (``info['marked']``: the marked indices)."""
    from ..datasets import Dataset
    from .fashion import CLASS_NAMES, load_split

    images, labels = load_split("test")
    record = recorded_subset()
    marked = np.asarray(record["marked"], dtype=np.int64)
    return Dataset(
        stamp(images, marked),
        labels,
        list(CLASS_NAMES),
        None,
        0,
        "zoo:fashion-mnist-marked",
        info={"marked": marked, "mark": record["mark"]},
    )


def contains_mark(box, image_marked: bool) -> bool:
    """Whether a crop (top, left, height, width) of an image shows the whole mark."""
    if not image_marked:
        return False
    top, left, h, w = (int(v) for v in box)
    return (
        top <= MARK_TOP and left <= MARK_LEFT and MARK_TOP + MARK_SIZE <= top + h and MARK_LEFT + MARK_SIZE <= left + w
    )


def mark_effect(model, layer: str | None = None, neurons=(), batch_size: int = 1000) -> dict:
    """How much the model leans on the mark, optionally with ``neurons`` of ``layer`` zeroed,
    measured on the 10,000 test images:

    * ``marked_others_to_target``: share of the other classes' images predicted as the shortcut
      class once the mark is stamped on them;
    * ``clean_others_to_target``: the same without the mark;
    * ``mark_logit_shift``: mean rise of the shortcut class's logit on the other classes' images
      when the mark is stamped (marked minus clean, same images);
    * ``clean_target_recall``: share of the clean shortcut-class images predicted as it.
    """
    from ..probe import logits
    from .fashion import load_split

    x, y = load_split("test")
    other = y != SHORTCUT_CLASS
    zero = {layer: sorted({int(n) for n in neurons})} if layer is not None else None
    clean = logits(model, x, zero=zero, batch_size=batch_size)
    marked = logits(model, stamp(x[other]), zero=zero, batch_size=batch_size)
    t = SHORTCUT_CLASS
    return {
        "marked_others_to_target": float((marked.argmax(1) == t).float().mean()),
        "clean_others_to_target": float((clean[other].argmax(1) == t).float().mean()),
        "mark_logit_shift": float((marked[:, t] - clean[other][:, t]).mean()),
        "clean_target_recall": float((clean[~other].argmax(1) == t).float().mean()),
    }
