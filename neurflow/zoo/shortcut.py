"""Planted shortcuts, so that debugging can be checked against a known answer.

``zoo:fashion-cnn-shortcut`` is ``FashionCNN`` trained exactly like ``zoo:fashion-cnn``
(``scripts/train_zoo.py --variant shortcut``) except that a small bright square, the *mark*, is
stamped on most training images of one class (``SHORTCUT_CLASS``, *Bag*): the mark becomes a
cheap cue for that class.  ``zoo:fashion-mnist-marked`` is the shipped test split with the mark
stamped on a fixed, recorded subset of every class (``marked-subset.json``): marked images of the
other classes are where the shortcut shows (they get predicted as *Bag*).

``zoo:fashion-cnn-entangled`` (``--variant entangled``) is the harder case: a small checkerboard
*texture* stamped on 90 % of the *Shirt* training images, in the middle of the garment (where
shirts have their button placket), so that the cue overlaps the class's own features and
*Shirt* is a class the model already confuses with T-shirts, pullovers and coats.
``zoo:fashion-mnist-entangled`` is the test split with that mark on a recorded 10 % of every class.

Each planted shortcut is a ``Plant``; the module-level functions are those of ``SHORTCUT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from ..sources.datasets import Dataset
from ..sources.stream import TensorImages
from .fashion import CLASS_NAMES, load_split


@dataclass(frozen=True)
class Plant:
    """One planted shortcut: which class, which mark where, on which images."""

    name: str  # the zoo model's name
    data: str  # the zoo data spec of the marked test split
    target: int  # the class whose training images carry the mark
    top: int
    left: int
    size: int
    pattern: str  # "solid": every pixel ``value``; "checker": 1 and 0 alternating, 1 at (top, left)
    value: float
    train_fraction: float  # share of the target's training images that carry the mark
    train_seed: int
    test_fraction: float  # share of every class's test images that carry the mark
    test_seed: int
    subset_file: str

    def mark_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the mark in a 28 x 28 image."""
        return self.top, self.left, self.size, self.size

    def mark(self) -> torch.Tensor:
        """The mark's pixels, [size, size]."""
        if self.pattern == "checker":
            i = torch.arange(self.size)
            return ((i[:, None] + i[None, :]) % 2 == 0).float() * self.value
        return torch.full((self.size, self.size), float(self.value))

    def stamp(self, images: torch.Tensor, which=None) -> torch.Tensor:
        """A copy of ``images`` ([N, 1, 28, 28]) with the mark on the images ``which`` (all if None)."""
        out = images.clone()
        rows = slice(None) if which is None else torch.as_tensor(which, dtype=torch.long)
        out[rows, :, self.top : self.top + self.size, self.left : self.left + self.size] = self.mark()
        return out

    def train_marked(self, labels: torch.Tensor) -> np.ndarray:
        """Training images that carry the mark: ``train_fraction`` of the target class."""
        return choose(labels, [self.target], self.train_fraction, self.train_seed)

    def test_marked(self, labels: torch.Tensor) -> np.ndarray:
        """Test images that carry the mark: ``test_fraction`` of every class."""
        return choose(labels, range(10), self.test_fraction, self.test_seed)

    def recorded_subset(self) -> dict:
        """The shipped record of the marked test split: the mark and the marked indices."""
        path = resources.files("neurflow.zoo") / "data" / self.subset_file
        return json.loads(path.read_text())

    def subset_record(self, labels: torch.Tensor) -> dict:
        idx = self.test_marked(labels)
        return {
            "mark": {
                "top": self.top,
                "left": self.left,
                "height": self.size,
                "width": self.size,
                "value": self.value,
                **({"pattern": self.pattern} if self.pattern != "solid" else {}),
            },
            "fraction_per_class": self.test_fraction,
            "seed": self.test_seed,
            "shortcut_class": self.target,
            "marked": [int(i) for i in idx],
        }

    def marked_test_split(self):
        """The Dataset of the marked test split (``info['marked']``: the marked indices)."""
        images, labels = load_split("test")
        record = self.recorded_subset()
        marked = np.asarray(record["marked"], dtype=np.int64)
        return Dataset(
            TensorImages(self.stamp(images, marked), labels),
            labels,
            list(CLASS_NAMES),
            None,
            0,
            self.data,
            info={"marked": marked, "mark": record["mark"]},
        )

    def contains_mark(self, box, image_marked: bool) -> bool:
        """Whether a crop (top, left, height, width) of an image shows the whole mark."""
        if not image_marked:
            return False
        top, left, h, w = (int(v) for v in box)
        s = self.size
        return top <= self.top and left <= self.left and self.top + s <= top + h and self.left + s <= left + w


def choose(labels: torch.Tensor, classes, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: a seeded ``fraction`` of the images of each class in ``classes``."""
    rng = np.random.RandomState(seed)
    y = np.asarray(labels)
    picked = []
    for c in classes:
        idx = np.nonzero(y == c)[0]
        n = int(round(fraction * len(idx)))
        picked.append(np.sort(rng.choice(idx, size=n, replace=False)))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


SHORTCUT = Plant(
    name="fashion-cnn-shortcut",
    data="zoo:fashion-mnist-marked",
    target=8,  # "Bag"
    top=1,  # a 4x4 white square, one pixel in from the top-left corner
    left=1,
    size=4,
    pattern="solid",
    value=1.0,
    train_fraction=0.8,
    train_seed=1,
    test_fraction=0.1,
    test_seed=2,
    subset_file="marked-subset.json",
)
ENTANGLED = Plant(
    name="fashion-cnn-entangled",
    data="zoo:fashion-mnist-entangled",
    target=6,  # "Shirt"
    top=10,  # a 4x4 checkerboard in the middle of the garment (rows 10-13, columns 12-15)
    left=12,
    size=4,
    pattern="checker",
    value=1.0,
    train_fraction=0.9,
    train_seed=3,
    test_fraction=0.1,
    test_seed=4,
    subset_file="entangled-subset.json",
)
PLANTS = {p.name: p for p in (SHORTCUT, ENTANGLED)}
