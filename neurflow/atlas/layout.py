"""The layout of an atlas directory (docs/atlas.md), known here and nowhere else: ``atlas.json``,
``index.html`` and ``classes/<index>-<slug>/``, one run directory per class (laid out as
``store.RunDir`` says).

It lives here rather than next to ``RunDir`` in ``store``: an atlas directory is not a run
directory, and its class directories are named with ``demo.slug``, a stage above ``store``.
"""

from __future__ import annotations

from pathlib import Path

from ..demo import slug
from ..store.layout import Layout

ATLAS = "atlas.json"
INDEX = "index.html"
CLASSES = "classes"  # DIR/classes/<index>-<slug>/: one run directory per class
ATLAS_FILES = (ATLAS, INDEX, CLASSES)  # what an atlas writes at the top of its directory


class AtlasDir(Layout):
    """The layout of an atlas directory (docs/atlas.md)."""

    @property
    def atlas(self) -> Path:
        return self.path / ATLAS

    @property
    def index(self) -> Path:
        return self.path / INDEX

    @property
    def classes(self) -> Path:
        return self.path / CLASSES

    def class_dir(self, index: int, name: str | None) -> Path:
        """The run directory of class ``index`` (named ``name``, or unnamed)."""
        return self.classes / f"{int(index)}-{slug(name if name is not None else str(index))}"
