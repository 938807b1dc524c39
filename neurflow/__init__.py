"""neurflow: NeurFlow circuits (ICLR 2025) for any PyTorch image classifier."""
__version__ = "0.1.0"

from .artifact import load  # noqa: E402
from .circuit import Circuit, Group, Layer, Node, SubConcept  # noqa: E402
from .config import NeurFlowConfig  # noqa: E402
from .errors import NeurFlowError  # noqa: E402
from .layers import LayerGraph, layer_names  # noqa: E402
from .pipeline import NeurFlow  # noqa: E402

__all__ = ["NeurFlow", "NeurFlowConfig", "NeurFlowError", "Circuit", "Layer", "Node", "SubConcept",
           "Group", "LayerGraph", "layer_names", "load", "__version__"]
