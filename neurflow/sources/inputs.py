"""A run's model, data and layers from their specs, and what the run records about them: what
``neurflow run`` loads, and each ``neurflow atlas`` worker once for all its classes."""

from __future__ import annotations

from typing import Sequence

from ..errors import NeurFlowError
from ..provenance import Provenance
from .datasets import load_data
from .models import load_model


def load_inputs(model: str, weights, trust_checkpoint: bool, seed: int, layers: Sequence[str] | None, data: str,
                transform):  # fmt: skip
    """(LoadedModel, Dataset, layers): ``layers`` default to the model's own list (the paper's
    layers of a torchvision architecture, a zoo model's); none at all is a one-line error."""
    loaded = load_model(model, weights, trust_checkpoint, seed=seed)
    names = list(layers or loaded.default_layers or [])
    if not names:
        raise NeurFlowError(
            "layers",
            "comma-separated layer names, class layer first",
            None,
            f"run `neurflow layers {model}` to list them",
        )
    return loaded, load_data(data, transform), names


def run_provenance(loaded, weights, data_spec: str, data):
    """The ``Provenance`` a run records about the model and data it loaded from specs."""
    return Provenance(
        model_spec=loaded.spec,
        weights=weights,
        data_spec=data_spec,
        transform=data.transform,
        data_skipped=data.skipped,
        files=tuple(data.files) if data.files else None,
    )
