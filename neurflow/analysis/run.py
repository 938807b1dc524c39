"""``Run``: a finished run, reopened - the one object that ``debug``, ``audit``, ``eval``,
``label`` and ``report`` work on.

A run is its directory (``RunDir``), its ``Circuit``, its settings (``NeurFlowConfig``) and its
``Provenance``; the model, the data, the class images, the crop pool and the layer graph are
loaded when first asked for.  The model and data are reopened from the specs the run recorded
(``Reopen`` overrides them: a run made from Python records none); when the run recorded a model
hash, the model must have the same weights, or the scores would describe a model the circuit was
not computed on.  The class images are selected exactly as the run selected them and checked
against the run's crop count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..circuit import Circuit
from ..config import NeurFlowConfig
from ..errors import NeurFlowError
from ..method.crops import CropPool
from ..method.predictions import predict
from ..method.probe import pool_responses
from ..method.selection import select_class_images
from ..options import Reopen
from ..slicing import LayerGraph
from ..sources.datasets import load_data
from ..sources.models import load_model
from ..sources.schemes import MODEL_SCHEMES, LoadedModel
from ..sources.stream import default_workers
from ..store import THUMB, DamagedRun, RunDir, hash_tensors, model_hash, thumbnails, trust
from .images import image_from_data, read_image, shrink_png

log = logging.getLogger(__name__)


class Run:
    """A finished run in ``directory``; see the module docstring."""

    def __init__(self, directory, reopen: Reopen | None = None, **overrides):
        self.reopen = dataclasses.replace(reopen or Reopen(), **overrides)
        self.dir = RunDir(directory)
        self.circuit: Circuit = self.dir.read_circuit()
        self.provenance = self.circuit.provenance
        over = {
            k: v for k, v in (("batch_size", self.reopen.batch_size), ("device", self.reopen.device)) if v is not None
        }
        self.config: NeurFlowConfig = dataclasses.replace(self.circuit.config, **over)
        self._cache: dict = {}

    # -- what the run is -----------------------------------------------------------------------
    @property
    def target(self) -> int:
        return self.circuit.target

    @property
    def quiet(self) -> bool:
        return self.reopen.quiet

    @property
    def layer_names(self) -> list[str]:
        return self.circuit.layer_names

    def node_set(self, name: str) -> list[int]:
        """The circuit's neurons at a layer: its nodes, or for the input layer the union of the cores."""
        if name == self.circuit.input_layer:
            return sorted({j for n in self.circuit.layers[-1].nodes.values() for j in n.core})
        return sorted(self.circuit.layer(name).nodes)

    # -- thumbnails (no model needed) ---------------------------------------------------------------
    @cached_property
    def thumbs(self) -> list[int]:
        return self.dir.thumbnails()

    def png(self, crop: int) -> bytes:
        path = self.dir.crop(crop)
        if not path.is_file():
            raise NeurFlowError(
                "directory",
                f"the crop thumbnail crops/{int(crop)}.png",
                str(self.dir),
                "the run directory is incomplete; rerun `neurflow run` into it",
            )
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "PNG":
                    raise ValueError(f"a {im.format} image")
                im.verify()
        except (OSError, ValueError, SyntaxError) as exc:
            raise DamagedRun(self.dir, f"crops/{int(crop)}.png", f"not a readable PNG ({exc})") from None
        return data

    def crop_pngs(self, crops, max_px: int | None = None) -> list[bytes]:
        """PNG bytes of ``crops`` at the resolution the model saw them (each crop resized to the
        run's image size, as the pool feeds it), at most ``max_px`` px a side (None: no cap).  The
        saved thumbnails where they are that resolution already (images of at most 64 px); else
        the crops are cut again from the class images, which reopens the run's model and data.
        Where those cannot be reopened (a run made from Python records no specs): the saved
        thumbnails, with one warning."""
        cap = int(max_px) if max_px else None
        crops = [int(c) for c in crops]
        cache = self._cache.setdefault("pngs", {})
        missing = list(dict.fromkeys(c for c in crops if (c, cap) not in cache))
        if missing:
            size = self.provenance.image_size
            rendered: dict = {}
            if not size or size > THUMB:
                try:
                    pool = self.pool
                except NeurFlowError as exc:
                    if not self._cache.get("warned_thumbs"):
                        self._cache["warned_thumbs"] = True
                        log.warning(
                            "the crops are sent as the saved %d-px thumbnails, not at the model's %s px: "
                            "the run's model and data could not be reopened (%s)",
                            THUMB,
                            size or "?",
                            exc,
                        )
                else:
                    rendered = thumbnails(pool, missing, cap)
            for c in missing:
                cache[(c, cap)] = rendered[c] if c in rendered else shrink_png(self.png(c), cap)
        return [cache[(c, cap)] for c in crops]

    # -- the model and the data, loaded when first needed --------------------------------------------
    @cached_property
    def _loaded(self):
        r, prov = self.reopen, self.provenance
        spec = r.model or prov.model_spec
        if not spec:
            raise NeurFlowError(
                "model",
                "the model spec of the run",
                prov.model,
                "this run recorded no loadable model spec (made from Python?); pass {p:model} [{p:weights}]",
            )
        if (
            not r.model
            and not r.trust_model_spec
            and MODEL_SCHEMES.lookup(str(spec)) is None
            and not trust.is_trusted(self.dir.path, str(spec))
        ):
            raise NeurFlowError(
                "model",
                "a registered model scheme (zoo:, torchvision:, ...) in the run, or a model spec given by you",
                spec,
                "the run records a model factory, which runs code, and you did not run it into this directory "
                "(or it moved, or the factory file changed): a spec read from a run directory is data, not "
                "permission to execute it; pass {p:model} SPEC to name the code yourself, or "
                "{p:trust_model_spec} to run the recorded one if you trust the directory",
            )
        weights = r.weights if r.model else (r.weights or prov.weights)
        loaded = load_model(spec, weights, r.trust_checkpoint, seed=self.config.seed)
        self._check_weights(loaded.model, spec, "; pass the run's {p:model} and {p:weights}")
        return loaded

    def _check_weights(self, model: torch.nn.Module, given, hint: str = "") -> None:
        """Refuse a model whose weights are not the run's (when the run recorded its model hash)."""
        recorded = self.provenance.model_hash
        if recorded and model_hash(model) != recorded:
            raise NeurFlowError(
                "model",
                "the model the run was computed with (same weights)",
                given,
                f"its weights differ from the run's (model hash {recorded[:12]}...){hint}",
            )

    @property
    def model(self) -> torch.nn.Module:
        return self._loaded.model

    @property
    def class_names(self) -> list | None:
        names = self.provenance.class_names or self._loaded.class_names
        return list(names) if names else None

    @cached_property
    def data(self):
        r, prov = self.reopen, self.provenance
        spec = r.data or prov.data_spec
        if not spec:
            raise NeurFlowError(
                "data",
                "the data of the run",
                prov.data,
                "this run recorded no data spec (made from Python?); pass {p:data}",
            )
        # the channels the run fed its model: greyscale files read as it read them, tensors converted alike
        columns = prov.extra.get("data_columns") or [None, None] if not r.data else [None, None]
        transform = r.transform if r.data else (r.transform or prov.transform)
        data = load_data(spec, transform, prov.image_channels or None, *columns)
        # a folder's identity is its listing; a run recorded before that kept a pixel hash, which the
        # class images' hash (class_selection) stands in for
        recorded = prov.data_hash or ""
        comparable = recorded.startswith("files:") or (bool(recorded) and data.images.cache_key() is None)
        if not r.data and comparable and data.images.identity() != prov.data_hash:
            raise NeurFlowError(
                "data",
                "the data the run was computed on",
                spec,
                f"the recorded spec gives other images here than the run's (hash {prov.data_hash[:12]}...): "
                "changed or moved files; pass the run's {p:data}",
            )
        return data

    @cached_property
    def class_selection(self) -> tuple[torch.Tensor, np.ndarray]:
        """(class images, their indices in the data), selected as the run selected them."""
        cfg, data = self.config, self.data
        labelled = cfg.selection == "labelled" and data.labels is not None
        pred = None if labelled else self.predictions
        selected = select_class_images(data.images, pred, data.labels, self.target, cfg.selection)
        recorded = self.provenance.class_images_hash
        if recorded and self._images_hash(selected[0]) != recorded:
            raise NeurFlowError(
                "data",
                "the data the run was computed on (the same class images)",
                data.spec or "data",
                f"its class images differ from the run's (hash {recorded[:12]}...): another file, folder or "
                "transform, or a relative path that names something else here; pass the run's {p:data}",
            )
        return selected

    @cached_property
    def predictions(self):
        """The model's predictions on the run's data (``method.predictions``: from the cache where
        this model and folder were predicted before, else one streamed pass)."""
        cfg = self.config
        workers = default_workers() if cfg.data_workers is None else cfg.data_workers
        return predict(self.graph.full(), self.data.images, model_hash(self.model), self.graph.code,
                       batch_size=cfg.batch_size, device=cfg.device, workers=workers, cache_dir=cfg.cache_dir,
                       quiet=self.quiet)  # fmt: skip

    def _images_hash(self, images: torch.Tensor) -> str:
        found = self._cache.get("images_hash")
        if found is None or found[0] is not images:
            found = self._cache["images_hash"] = (images, hash_tensors([("images", images)]))
        return found[1]

    @property
    def class_images(self) -> torch.Tensor:
        return self.class_selection[0]

    @cached_property
    def pool(self):
        cfg = self.config
        pool = CropPool(self.class_images, cfg.granularities, cfg.stride_ratio)
        n = self.provenance.n_crops
        if n and n != len(pool):
            raise NeurFlowError(
                "data", "the data of the run", self.data.spec, f"it gives {len(pool)} crops, the run had {n}"
            )
        return pool

    @cached_property
    def graph(self):
        return LayerGraph(self.model, self.layer_names, channel_axis=self.config.channel_axis)

    @cached_property
    def identity(self) -> str:
        """Hash of the run, the model's weights and the class images (keys checkpoints)."""
        parts = [self.provenance.run_hash, model_hash(self.model), self._images_hash(self.class_images)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def responses(self, layer: str) -> np.ndarray:
        """Responses [P, C] of every crop of the pool at ``layer`` (one layer kept at a time)."""
        if self._cache.get("layer") != layer:
            cfg = self.config
            res = pool_responses(self.graph, self.pool, [layer], cfg.batch_size, cfg.device)
            self._cache.update(layer=layer, responses=res[layer])
        return self._cache["responses"]

    def attach(self, model: torch.nn.Module | None = None, data=None, class_names=None) -> "Run":
        """Use these objects instead of reopening the recorded specs (a run made from Python
        records none): ``model`` (checked against the run's model hash), ``data`` a ``Dataset``."""
        if model is not None:
            prov = self.provenance
            self._check_weights(model, type(model).__name__)
            self.__dict__["_loaded"] = LoadedModel(model, prov.model, list(class_names) if class_names else None)
        if data is not None:
            self.__dict__["data"] = data
        for derived in ("class_selection", "pool", "graph", "identity"):  # computed from the old ones
            self.__dict__.pop(derived, None)
        self._cache.clear()
        return self

    # -- images to debug ---------------------------------------------------------------------------
    def image(self, spec) -> tuple[torch.Tensor, dict]:
        """An ``image`` argument - an image file, or an index into the run's data - as a tensor
        [C, S, S] prepared like the run's inputs, and where it came from."""
        text = str(spec)
        if text.lstrip("-").isdigit() and not Path(text).is_file():
            data = self.data
            i = int(text)
            image = image_from_data(text, data)
            label = int(data.labels[i]) if data.labels is not None else None
            names = self.class_names or data.class_names or []
            return image, {
                "source": f"{data.spec or 'data'}[{i}]",
                "index": i,
                "label": label,
                "label_name": names[label] if label is not None and 0 <= label < len(names) else None,
                "file": data.files[i] if data.files else None,
            }
        return read_image(text, self.circuit), {
            "source": text,
            "index": None,
            "label": None,
            "label_name": None,
            "file": text,
        }
