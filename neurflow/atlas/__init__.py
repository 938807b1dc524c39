"""``neurflow atlas``: every class of a model, one NeurFlow circuit each, on as many workers as
there are (Ray: a local instance by default, a cluster with ``--ray-address``), and the class
atlas that compares them (docs/atlas.md).

* ``plan``: what to run (model, data, layers, settings, targets, class directories) and the
  shared prediction pass; every check that can refuse the command runs here, before anything
  is written;
* ``workers``: ``ClassWorker`` (loads the model and data once, runs classes through
  ``NeurFlow.fit(out=DIR)`` and writes their reports), serially or as Ray actors;
* ``similarity``: the circuit-overlap similarity (weighted Jaccard), its agreement with the
  model's confusion (Spearman, Mantel permutation p-value) and the clustering order;
* ``page``: ``atlas.json`` and the self-contained ``index.html``;
* ``layout``: where those and the class directories lie in an atlas directory (``AtlasDir``);
* ``cli``: the command's flags and ``cmd_atlas``.

This package is imported by the command line's parser: nothing here imports torch or ray at
module level (``cli`` is read for ``--help``; the rest is imported when the command runs).
"""

from __future__ import annotations

__all__ = ["run_atlas"]


def __getattr__(name: str):
    if name == "run_atlas":
        from .driver import run_atlas  # lazy: `import neurflow.atlas` stays light

        return run_atlas
    raise AttributeError(f"module 'neurflow.atlas' has no attribute {name!r}")
