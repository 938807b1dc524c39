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
import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .artifact import RunDir, hash_tensors, model_hash
from .circuit import Circuit
from .config import NeurFlowConfig
from .errors import NeurFlowError
from .options import Reopen

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
        return path.read_bytes()

    def crop_pngs(self, crops, max_px: int | None = None) -> list[bytes]:
        """PNG bytes of ``crops`` at the resolution the model saw them (each crop resized to the
        run's image size, as the pool feeds it), at most ``max_px`` px a side (None: no cap).  The
        saved thumbnails where they are that resolution already (images of at most 64 px); else
        the crops are cut again from the class images, which reopens the run's model and data.
        Where those cannot be reopened (a run made from Python records no specs): the saved
        thumbnails, with one warning."""
        from .data import THUMB, thumbnails

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
                cache[(c, cap)] = rendered[c] if c in rendered else _shrink_png(self.png(c), cap)
        return [cache[(c, cap)] for c in crops]

    # -- the model and the data, loaded when first needed --------------------------------------------
    @cached_property
    def _loaded(self):
        from .models import load_model

        r, prov = self.reopen, self.provenance
        spec = r.model or prov.model_spec
        if not spec:
            raise NeurFlowError(
                "model",
                "the model spec of the run",
                prov.model,
                "this run recorded no loadable model spec (made from Python?); pass {p:model} [{p:weights}]",
            )
        weights = r.weights if r.model else (r.weights or prov.weights)
        loaded = load_model(spec, weights, r.trust_checkpoint, seed=self.config.seed)
        if prov.model_hash and model_hash(loaded.model) != prov.model_hash:
            raise NeurFlowError(
                "model",
                "the model the run was computed with (same weights)",
                spec,
                f"its weights differ from the run's (model hash {prov.model_hash[:12]}...); pass "
                "the run's {p:model} and {p:weights}",
            )
        return loaded

    @property
    def model(self) -> torch.nn.Module:
        return self._loaded.model

    @property
    def class_names(self) -> list | None:
        names = self.provenance.class_names or self._loaded.class_names
        return list(names) if names else None

    @cached_property
    def data(self):
        from .datasets import load_data

        r, prov = self.reopen, self.provenance
        spec = r.data or prov.data_spec
        if not spec:
            raise NeurFlowError(
                "data",
                "the data of the run",
                prov.data,
                "this run recorded no data spec (made from Python?); pass {p:data}",
            )
        return load_data(spec, r.transform if r.data else (r.transform or prov.transform))

    @cached_property
    def class_selection(self) -> tuple[torch.Tensor, np.ndarray]:
        """(class images, their indices in the data), selected as the run selected them."""
        from .data import select_class_images
        from .probe import logits

        cfg, data = self.config, self.data
        pred = logits(self.model, data.images, batch_size=cfg.batch_size, device=cfg.device)
        return select_class_images(data.images, pred, data.labels, self.target, cfg.selection)

    @property
    def class_images(self) -> torch.Tensor:
        return self.class_selection[0]

    @cached_property
    def pool(self):
        from .crops import CropPool

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
        from .layers import LayerGraph

        return LayerGraph(self.model, self.layer_names, channel_axis=self.config.channel_axis)

    @cached_property
    def identity(self) -> str:
        """Hash of the run, the model's weights and the class images (keys checkpoints)."""
        parts = [self.provenance.run_hash, model_hash(self.model), hash_tensors([("images", self.class_images)])]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def responses(self, layer: str) -> np.ndarray:
        """Responses [P, C] of every crop of the pool at ``layer`` (one layer kept at a time)."""
        from .probe import pool_responses

        if self._cache.get("layer") != layer:
            cfg = self.config
            res = pool_responses(self.graph, self.pool, [layer], cfg.batch_size, cfg.device)
            self._cache.update(layer=layer, responses=res[layer])
        return self._cache["responses"]

    def attach(self, model: torch.nn.Module | None = None, data=None, class_names=None) -> "Run":
        """Use these objects instead of reopening the recorded specs (a run made from Python
        records none): ``model`` (checked against the run's model hash), ``data`` a ``Dataset``."""
        from .models import LoadedModel

        if model is not None:
            prov = self.provenance
            if prov.model_hash and model_hash(model) != prov.model_hash:
                raise NeurFlowError(
                    "model",
                    "the model the run was computed with (same weights)",
                    type(model).__name__,
                    f"its weights differ from the run's (model hash {prov.model_hash[:12]}...)",
                )
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
                "label_name": names[label] if label is not None and label < len(names) else None,
                "file": data.files[i] if data.files else None,
            }
        return read_image(text, self.circuit), {
            "source": text,
            "index": None,
            "label": None,
            "label_name": None,
            "file": text,
        }


def _shrink_png(data: bytes, max_px: int | None) -> bytes:
    """PNG ``data`` resized to at most ``max_px`` px a side (unchanged when it is that small)."""
    import io

    if not max_px:
        return data
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_px:
            return data
        w, h = im.size
        s = max_px / max(w, h)
        small = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def image_from_data(index, data) -> torch.Tensor:
    """Image ``index`` of a ``Dataset``."""
    i, n = int(index), data.images.shape[0]
    if not 0 <= i < n:
        raise NeurFlowError("image", f"an index in 0..{n - 1} into the run's data", index)
    return data.images[i]


def read_image(path: str, circuit: Circuit) -> torch.Tensor:
    """An image file prepared like the run's inputs: the ImageNet preset when the run used it,
    else the pixels scaled to [0, 1], converted to the run's channel count and resized to its
    image size.  Returns [C, S, S]."""
    from .datasets import IMAGE_EXT, imagenet_transform, to_rgb

    p = Path(path)
    if not p.is_file():
        raise NeurFlowError("image", "an image file or an index into the run's data", path, "no such file")
    if p.suffix.lower() not in IMAGE_EXT:
        raise NeurFlowError("image", "an image file (" + ", ".join(sorted(IMAGE_EXT)) + ")", path)
    prov = circuit.provenance
    size, channels = prov.image_size or 224, prov.image_channels or 3
    try:
        with Image.open(p) as im:
            if prov.transform == "imagenet":
                x = imagenet_transform(to_rgb(im))
            else:
                img = (
                    to_rgb(im).convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
                )
                a = np.asarray(img, dtype=np.float32) / 255.0
                x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise NeurFlowError("image", "a readable image file", path, str(exc)[:160]) from None
    if x.shape[-1] != size:
        raise NeurFlowError(
            "image", f"an image that the run's transform makes {size} px", path, f"it gives {x.shape[-1]} px"
        )
    return x
