"""Slicing: layers by name, for any model, with torch.fx in the style of torchvision's
``models/feature_extraction.py``.

The model is traced once with the analysed layers as leaf modules.  Everything that lives in
``forward()`` (flatten before the head, GoogLeNet's input transform, residual adds, a ViT's
class token) is part of the traced graph and therefore honoured.  From that graph we cut

* the *recorder*: input -> outputs of the analysed layers (one activation pass),
* the *prefix* of a layer: input -> (its output, extras),
* the *segment* between two layers: (lower output, extras) -> upper output,

where *extras* are the values a segment needs that do not depend on the lower layer (the other
end of a skip connection that jumps over the lower layer).  They are computed from the same input
and held fixed: integrated gradients then attribute the upper response to the lower layer's
activation with everything else that reaches the upper layer kept at its actual value.

The sub-modules of the graph modules are the user's own module objects (shared, not copied), so a
segment costs what its layers cost, and nothing is added to or changed on the user's model.

The traced graph is made free of in-place writes (``out_of_place``: ``nn.ReLU(inplace=True)``,
``F.relu(x, inplace=True)``, ``x.relu_()`` ...): a layer's recorded output stays what the layer
returned, and integrated gradients can start from any layer's output.  The graph also tells
which layers the output depends on and where the gradient is cut (``.detach()``, ``.data``).
"""

from .axes import Inside, channels_first, channels_last, module_axis
from .graph import LayerGraph
from .inplace import out_of_place
from .norms import freeze
from .ops import (
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    COMBINE,
    closure,
    descendants,
)
from .trace import LAYERS_HINT, FlatTracer, code_digest, layer_names

__all__ = [
    "LAYERS_HINT",
    "CHANNELWISE_FUNCTIONS",
    "CHANNELWISE_METHODS",
    "CHANNELWISE_MODULES",
    "COMBINE",
    "FlatTracer",
    "Inside",
    "LayerGraph",
    "channels_first",
    "channels_last",
    "closure",
    "code_digest",
    "descendants",
    "freeze",
    "layer_names",
    "module_axis",
    "out_of_place",
]
