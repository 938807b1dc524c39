"""Provenance: where a run's model and data came from and what the run saw (``circuit.json``'s
``meta``, docs/artifact.md).  Typed here, written by the estimator only, read back without
guessing: the specs that reopen the model and data are stored as such (``model_spec``,
``data_spec``); a run whose model or data was given as a Python object records ``None`` there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# keys of ``meta`` that are not fields (written by older versions or derived)
_RESERVED = {"model", "data"}


@dataclass(frozen=True)
class Provenance:
    # what the caller says (the CLI, the demo, or a Python user through ``fit(provenance=...)``)
    model_spec: str | None = None  # a MODEL spec that reopens the model (zoo:NAME, torchvision:NAME, ...)
    weights: str | None = None  # the weights file given with the spec
    data_spec: str | None = None  # a DATA spec that reopens the data (folder, .pt file, zoo:NAME)
    transform: str | None = None  # the transform preset of the data spec (None: its default)
    data_skipped: int | None = None  # unreadable image files skipped while reading the data
    files: tuple | None = None  # image paths relative to a data folder, in image order
    data_hash: str = ""  # hash of the data's images (all of them): the reopened data must give the same
    demo: str | None = None  # the `neurflow demo` that made the run
    note: str | None = None  # a caveat shown with the run
    # what the estimator records
    model_class: str = ""  # type(model).__name__
    data_shape: tuple = ()  # shape of the image tensor given to fit
    neurflow: str = ""
    torch: str = ""
    target_name: str | None = None
    class_names: tuple | None = None
    n_images: int = 0
    n_class_images: int = 0
    n_crops: int = 0
    image_size: int = 0
    image_channels: int = 0
    run_hash: str = ""
    model_hash: str = ""
    class_images_hash: str = ""  # the class images' hash: reopened data must give the same ones
    crop_sizes: Mapping = field(default_factory=dict)
    timings_s: Mapping = field(default_factory=dict)
    extra: Mapping = field(default_factory=dict)  # any other keys (kept, shown, never interpreted)

    @property
    def model(self) -> str:
        """How the model is shown: its spec, else its class name."""
        return self.model_spec or self.model_class or "?"

    @property
    def data(self) -> str:
        """How the data is shown: its spec, else the tensor's shape."""
        return self.data_spec or (f"tensor {list(self.data_shape)}" if self.data_shape else "?")

    def replace(self, **changes) -> "Provenance":
        return dataclasses.replace(self, **changes)

    def to_meta(self) -> dict:
        """The ``meta`` object of ``circuit.json`` (docs/artifact.md)."""
        d: dict[str, Any] = {"model": self.model, "data": self.data}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            d[f.name] = v
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_meta(cls, meta: Mapping) -> "Provenance":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw: dict[str, Any] = {}
        for k in names & set(meta):
            v = meta[k]
            kw[k] = tuple(v) if isinstance(v, list) else v
        if "model_spec" not in meta:  # schema-1 runs written before provenance was typed
            kw.update(_legacy_specs(meta))
        extra = {k: v for k, v in meta.items() if k not in names and k not in _RESERVED}
        return cls(**kw, extra=extra)


def _legacy_specs(meta: Mapping) -> dict:
    """Runs written by neurflow 0.1 stored specs under ``model``/``data`` (the CLI's, the demo's,
    or what a Python caller passed as ``meta``) and otherwise the model's class name and
    ``tensor [N, C, H, W]``.  0.1 reopened a ``model`` with a ':' or naming a file, and any
    ``data`` but ``tensor [...]``: the same rule here, for those runs only."""
    model, data = str(meta.get("model") or ""), str(meta.get("data") or "")
    model_spec = model if (":" in model or Path(model).is_file()) else None
    tensor = data.startswith("tensor ")
    data_spec = data if data and not tensor else None
    out: dict = {"model_spec": model_spec, "data_spec": data_spec}
    if model and not model_spec:
        out["model_class"] = model
    if tensor:
        try:
            out["data_shape"] = tuple(json.loads(data[len("tensor ") :]))
        except ValueError:
            pass
    if meta.get("transform") is None and data_spec and (data_spec == "zoo:photos" or Path(data_spec).is_dir()):
        out["transform"] = "imagenet"  # 0.1 recorded only an explicit --transform; folders used the preset
    return out
