"""A run's model, data and layers from their specs, and what the run records about them: what
``neurflow run`` loads, and each ``neurflow atlas`` worker once for all its classes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import NeurFlowError
from ..provenance import Provenance
from .datasets import load_data
from .models import input_channels, load_model
from .schemes import DATA_SCHEMES, MODEL_SCHEMES


def load_inputs(model: str, weights, trust_checkpoint: bool, seed: int, layers: Sequence[str] | None, data: str,
                transform, image_column: str | None = None, label_column: str | None = None):  # fmt: skip
    """(LoadedModel, Dataset, layers): ``layers`` default to the model's own list (the paper's
    layers of a torchvision architecture, a zoo model's); none at all is a one-line error.  The
    data gets the model's input channels (``input_channels``)."""
    loaded = load_model(model, weights, trust_checkpoint, seed=seed)
    names = list(layers or loaded.default_layers or [])
    if not names:
        raise NeurFlowError(
            "layers",
            "comma-separated layer names, class layer first",
            None,
            f"run `neurflow layers {model}` to list them",
        )
    found = load_data(data, transform, input_channels(loaded.model), image_column, label_column)
    return loaded, found, names


def absolute_spec(spec, schemes):
    """``spec`` with a relative file path in it made absolute: a ``path`` (data), ``file.py:fn`` (a
    factory); scheme specs (``zoo:NAME``) and ``module:fn`` are kept as they are."""
    if not isinstance(spec, str) or not spec or schemes.lookup(spec) is not None:
        return spec
    if Path(spec).exists():
        return str(Path(spec).resolve())
    path, colon, fn = spec.rpartition(":")
    if colon and path.endswith(".py") and Path(path).is_file():
        return f"{Path(path).resolve()}:{fn}"
    return spec


def run_provenance(loaded, weights, data_spec: str, data):
    """The ``Provenance`` a run records about the model and data it loaded from specs (paths made
    absolute: reopened from another directory, they name the same files)."""
    return Provenance(
        model_spec=absolute_spec(loaded.spec, MODEL_SCHEMES),
        weights=str(Path(weights).resolve()) if weights else weights,
        data_spec=absolute_spec(data_spec, DATA_SCHEMES),
        transform=data.transform,
        data_skipped=data.skipped,  # the scheme's own count: fit adds the images found unreadable
        files=tuple(data.files) if data.files else None,
        data_hash=data.images.identity(),  # a folder: its listing (paths, sizes, mtimes), not its pixels
        extra={"data_columns": [data.info["image_column"], data.info["label_column"]]}
        if "image_column" in data.info
        else {},
    )
