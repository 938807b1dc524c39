"""The ``torchvision:NAME`` scheme: a torchvision architecture with random weights, and the
paper's layer lists for ResNet-50, GoogLeNet and AlexNet.

``imagenet_class_names`` is the one source of ImageNet-1k's class names in neurflow (the
``torchvision:``, ``timm:`` and ``zoo:efficientnet-lite0`` models declare them).
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


IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str] | None:
    """ImageNet-1k's 1000 class names in class-index order (``[0] == "tench"``): the categories
    torchvision's ImageNet weights declare, one short unique name each (no download: they ship
    in torchvision's code).  None without torchvision."""
    try:
        from torchvision.models import ResNet18_Weights
    except ImportError:
        return None
    names = list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    return names if len(names) == IMAGENET_CLASSES else None


def output_classes(model) -> int | None:
    """The classes a classifier's head gives: the outputs of its last linear layer or 2-d
    convolution (SqueezeNet's head) in declaration order; None without either."""
    from torch import nn

    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
        elif isinstance(m, nn.Conv2d):
            last = m.out_channels
    return last


def imagenet_names_for(model) -> list[str] | None:
    """ImageNet's class names for a model with 1000 outputs; None for any other head."""
    return imagenet_class_names() if output_classes(model) == IMAGENET_CLASSES else None


def load_torchvision(name: str) -> LoadedModel:
    """``torchvision:NAME``: the architecture with random weights (weights=None); a 1000-class
    head declares ImageNet's class names (``--target tench`` is class 0)."""
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
    return LoadedModel(model, f"torchvision:{name}", imagenet_names_for(model), PAPER_LAYERS.get(name))


def register() -> None:
    """Register the ``torchvision:`` scheme (a built-in plugin: ``schemes.BUILTIN_PLUGINS``)."""
    register_model_scheme(
        "torchvision",
        load_torchvision,
        "torchvision:NAME - a torchvision architecture, random weights unless a weights file (state dict) is given",
    )
