"""The ``torchvision:NAME`` scheme: a torchvision architecture with random weights, and the
paper's layer lists for ResNet-50, GoogLeNet and AlexNet.
"""

from __future__ import annotations

from ..errors import NeurFlowError, unknown_name
from .schemes import LoadedModel, register_model_scheme

# the paper's layer lists (method.md section 1), top down, lowest input layer last
PAPER_LAYERS = {
    "resnet50": [
        "fc",
        "layer4.2",
        "layer4.1",
        "layer4.0",
        "layer3.5",
        "layer3.4",
        "layer3.3",
        "layer3.2",
        "layer3.1",
        "layer3.0",
        "layer2.3",
    ],
    "googlenet": [
        "fc",
        "inception5b",
        "inception5a",
        "inception4e",
        "inception4d",
        "inception4c",
        "inception4b",
        "inception4a",
        "inception3b",
        "inception3a",
        "maxpool2",
    ],
    "alexnet": [
        "classifier.6",
        "classifier.5",
        "classifier.2",
        "features.12",
        "features.9",
        "features.7",
        "features.5",
        "features.2",
    ],
}


def load_torchvision(name: str) -> LoadedModel:
    """``torchvision:NAME``: the architecture with random weights (weights=None)."""
    try:
        import torchvision
    except ImportError:
        raise NeurFlowError(
            "model", "torchvision installed for torchvision:NAME", name, "pip install 'neurflow[torchvision]'"
        ) from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown_name("model", f"torchvision:{name}", [f"torchvision:{n}" for n in names])
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return LoadedModel(model, f"torchvision:{name}", None, PAPER_LAYERS.get(name))


def register() -> None:
    """Register the ``torchvision:`` scheme (a built-in plugin: ``schemes.BUILTIN_PLUGINS``)."""
    register_model_scheme(
        "torchvision",
        load_torchvision,
        "torchvision:NAME - a torchvision architecture, random weights unless a weights file (state dict) is given",
    )
