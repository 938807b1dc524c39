"""The NeurFlow algorithm (method.md): the class images (``selection``) and their crop pool
(``crops``), the forward probes (``probe``), each layer's core neurons (``core_neurons``) and
sub-concepts (``concepts``), the layer-wide groups and the trace (``groups``), all driven top down
by the ``NeurFlow`` estimator (``estimator``)."""

from .concepts import NodeFit, fit_node, normalise
from .core_neurons import adaptive_lengths, attribute, choose_steps, ig_steps, rank_core, top_exemplars
from .crops import CropPool
from .estimator import NeurFlow
from .selection import resolve_target, select_class_images

__all__ = [
    "CropPool",
    "NeurFlow",
    "NodeFit",
    "adaptive_lengths",
    "attribute",
    "choose_steps",
    "fit_node",
    "ig_steps",
    "normalise",
    "rank_core",
    "resolve_target",
    "select_class_images",
    "top_exemplars",
]
