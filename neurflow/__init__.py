"""neurflow: NeurFlow circuits (ICLR 2025) for any PyTorch image classifier.

The public API is what this module exports (``__all__``); the README uses nothing else.  The
subpackages are the pipeline's stages; imports only point down this order (tests/test_architecture.py):
the base modules here (``errors``, ``config``, ``options``, ``circuit``, ``neurons``, ``_state`` ...),
``store`` (the artifact on disk), ``sources`` (specs -> model and images; the ``zoo`` plugin),
``slicing`` (the model cut by layer names), ``attribution`` (integrated gradients), ``method`` (the
algorithm, ``NeurFlow``), ``analysis`` (what is done with a finished run), ``demo`` and ``atlas``,
then ``cli``.  Their modules are internal: names may change between releases.

* ``NeurFlow(**settings).fit(model, images, target, layers)`` -> ``.circuit_``, a ``Circuit``;
  settings are the fields of ``NeurFlowConfig``; ``fit(out=DIR)`` saves and resumes a run.
* ``load(DIR)`` reads a run's ``Circuit`` back without the model; ``Run(DIR)`` reopens a run with
  its model and data (loaded when needed) for ``debug_image``, ``audit``, ``label_run``,
  ``run_eval`` and ``write_report``.
* ``layer_names(model)`` lists the layers a model offers; ``summary(circuit)`` is ``neurflow show``.
* ``register_model_scheme`` / ``register_data_scheme`` add ``NAME:...`` spec schemes (plugins).
* User mistakes raise ``NeurFlowError`` (one line naming the parameter).
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .circuit import Circuit, Group, Layer, Node, SubConcept
from .config import NeurFlowConfig
from .errors import NeurFlowError
from .provenance import Provenance

# name -> "module:attribute", imported on first use (keeps `import neurflow` light and acyclic)
_LAZY = {
    "NeurFlow": "method.estimator:NeurFlow",
    "load": "store.layout:load",
    "RunStore": "store.runstore:RunStore",
    "Run": "analysis.run:Run",
    "Reopen": "options:Reopen",
    "layer_names": "slicing.trace:layer_names",
    "debug_image": "analysis.debug:debug_image",
    "audit": "analysis.audit:audit",
    "label_run": "analysis.labels:label_run",
    "get_labeler": "analysis.labels:get_labeler",
    "run_eval": "analysis.evaluate:run_eval",
    "EvalOptions": "options:EvalOptions",
    "write_report": "analysis.report:write_report",
    "summary": "analysis.summary:summary",
    "load_model": "sources.models:load_model",
    "load_data": "sources.datasets:load_data",
    "register_model_scheme": "sources.schemes:register_model_scheme",
    "register_data_scheme": "sources.schemes:register_data_scheme",
}

__all__ = [
    "__version__",
    "Circuit",
    "Layer",
    "Node",
    "SubConcept",
    "Group",
    "NeurFlowConfig",
    "NeurFlowError",
    "Provenance",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'neurflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
