"""neurflow: NeurFlow circuits (ICLR 2025) for any PyTorch image classifier.

The public API is what this module exports (``__all__``); the README uses nothing else.  The
submodules are internal: their names may change between releases.

* ``NeurFlow(**settings).fit(model, images, target, layers)`` -> ``.circuit_``, a ``Circuit``;
  settings are the fields of ``NeurFlowConfig``; ``fit(out=DIR)`` saves and resumes a run.
* ``load(DIR)`` reads a run's ``Circuit`` back without the model; ``Run(DIR)`` reopens a run with
  its model and data (loaded when needed) for ``debug_image``, ``audit``, ``label_run``,
  ``run_eval`` and ``write_report``.
* ``layer_names(model)`` lists the layers a model offers; ``summary(circuit)`` is ``neurflow show``.
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
    "NeurFlow": "pipeline:NeurFlow",
    "load": "artifact:load",
    "RunStore": "artifact:RunStore",
    "Run": "run:Run",
    "Reopen": "options:Reopen",
    "layer_names": "layers:layer_names",
    "debug_image": "debug:debug_image",
    "audit": "auditing:audit",
    "label_run": "labels:label_run",
    "get_labeler": "labels:get_labeler",
    "run_eval": "evaluate:run_eval",
    "EvalOptions": "options:EvalOptions",
    "write_report": "report:write_report",
    "summary": "show:summary",
    "load_model": "models:load_model",
    "load_data": "datasets:load_data",
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
