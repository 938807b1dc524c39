"""``NeurFlow``: the estimator that runs the whole top-down pass (scikit-learn's contract).

The constructor stores settings (the fields of ``NeurFlowConfig``), ``fit`` computes and returns
``self``, the result is ``circuit_``; ``get_params`` / ``set_params`` make it work with
``sklearn.base.clone``.  ``fit`` runs in four steps: ``_prepare`` (the layer graph, one prediction
pass, the class images and their crop pool, and the run hash that keys saving and resuming),
``_store`` (the run's store, resumed or handed back finished), ``_layer_loop`` (the pool's
responses at every layer in one pass, then each layer pair top down: ``layer_pass``) and
``_finish`` (groups, group edges and the trace: ``groups``; the ``Circuit`` and what it records).
Saving and resuming go through a ``RunStore``; the one ``out=``
creates is owned by ``fit`` and released however it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import textwrap
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .._state import running
from .._version import __version__
from ..circuit import Circuit, frozen_map
from ..config import KEEP_MAPS_BYTES, NeurFlowConfig, groups_per_layer
from ..errors import NeurFlowError, unknown_name
from ..provenance import Provenance
from ..slicing import LayerGraph
from ..sources.datasets import Dataset
from ..sources.schemes import LoadedModel
from ..sources.stream import ImageSource, TorchImages, as_source, default_workers
from ..store import RunStore, hash_tensors, model_hash, run_hash, trust
from .crops import CropPool
from .groups import assemble
from .layer_pass import fit_layers
from .predictions import Predictions, predict
from .probe import logits, pool_responses
from .selection import resolve_target, select_class_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What ``fit`` prepares before the layer loop: the cut model, the target, the class images
    (and their indices in ``images``), their crop pool and the run's identity."""

    graph: LayerGraph
    target: int
    class_images: torch.Tensor
    kept: np.ndarray
    pool: CropPool
    settings: dict
    model_hash: str
    run_hash: str
    images_hash: str  # of the class images: a reopened run checks its data against it


class NeurFlow:
    """Explain one class of a classifier as a NeurFlow circuit.

    ``NeurFlow(tau=16, top_k=50, ...)`` stores settings only (the fields of ``NeurFlowConfig``,
    or a whole ``config``); ``fit(model, images, target=..., layers=[...])`` computes the circuit
    into ``circuit_``.  ``layers`` are module names top down, the class layer first; the last one
    is the lowest *input* layer (its channels are core neurons of the layer above, never nodes).
    """

    def __init__(self, config: NeurFlowConfig | None = None, **settings):
        base = config or NeurFlowConfig()
        _check_settings(settings)
        self.config = dataclasses.replace(base, **settings) if settings else base

    def get_params(self, deep: bool = True) -> dict:
        """The settings, {field of ``NeurFlowConfig``: value} (``deep`` has nothing to descend into)."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    def set_params(self, **params) -> "NeurFlow":
        """Change settings (fields of ``NeurFlowConfig``, validated); returns ``self``."""
        _check_settings(params)
        self.config = dataclasses.replace(self.config, **params)
        return self

    def fit(
        self,
        model: nn.Module,
        images,
        target,
        layers: Sequence[str],
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        store: RunStore | None = None,
        out=None,
        overwrite: bool = False,
        quiet: bool = True,
        leaf_modules: Sequence[type] = (),
        provenance: Provenance | None = None,
        predictions: torch.Tensor | None = None,
    ) -> "NeurFlow":
        """Compute the circuit of ``target`` into ``circuit_``.

        Parameters
        ----------
        model : nn.Module
            The classifier; left as it was found (flags, ``requires_grad``, device, hooks).
        images : torch.Tensor, torch.utils.data.Dataset or data source
            ``[N, C, H, W]`` float images, prepared (normalised) the way the model expects them: a
            tensor, a map-style ``torch.utils.data.Dataset`` whose items are an image or (image,
            label), or a neurflow data source (``neurflow.load_data(spec).images``: a folder listed,
            decoded in batches).  Only the class images are held in memory; the prediction pass
            streams the rest (cached on disk for a folder, ``cache_dir``).
        target : int or str
            The class: an index, or a name from ``class_names``.
        layers : sequence of str
            Module names top down: the class layer first, the lowest *input* layer last (its
            channels are core neurons of the layer above, never nodes).  ``neurflow.layer_names``
            lists the usable names.
        labels : torch.Tensor, optional
            One label per image (needed for ``selection="labelled"``).
        class_names : sequence of str, optional
            Class names, by index (recorded; ``target`` may then be a name).
        store : RunStore, optional
            Where layers are saved as they finish and a matching run is resumed or reloaded.
        out : path, optional
            Creates (and owns) ``RunStore(out, ..., overwrite)`` when ``store`` is not given.
        overwrite : bool
            Replace a different run in ``out``.
        quiet : bool
            No progress bars.
        leaf_modules : sequence of type
            Module types torch.fx keeps whole (it cannot trace into them).
        provenance : Provenance, optional
            The specs that reopen the model and data (``model_spec``, ``data_spec``...), recorded
            in ``circuit.json``; the rest is filled in here.
        predictions : torch.Tensor or Predictions, optional
            The model's logits on ``images`` when already computed (``neurflow atlas`` shares one
            prediction pass among its classes).

        Returns
        -------
        NeurFlow
            ``self``, with ``circuit_`` (a ``Circuit``: layers top down with their nodes, core
            neurons, sub-concepts and groups, the group edges and the traced circuit).
        """
        cfg = self.config
        t0 = time.perf_counter()
        layers = _checked_layers(layers, cfg)
        images = as_source(images)
        if labels is None and cfg.selection == "labelled" and isinstance(images, TorchImages):
            labels = images.read_labels()
        timings: dict = {}
        with contextlib.ExitStack() as owned:
            with running(model, cfg.device, cfg.threads, cfg.seed):
                prep = self._prepare(model, images, target, layers, labels, class_names, leaf_modules, predictions,
                                     provenance, timings, quiet)  # fmt: skip
                store = self._store(owned, store, out, overwrite, prep.run_hash)
                if store is not None and provenance is not None:  # the caller named this spec for this run
                    trust.remember(store.dir, provenance.model_spec)
                finished = store.finished() if store is not None else None
                if finished is not None:  # the same run is already finished there: nothing to recompute
                    self.circuit_ = finished
                    return self
                fitted = self._layer_loop(prep, layers, store, quiet, timings)
            self.circuit_ = self._finish(model, images, layers, class_names, provenance, prep, fitted, timings, t0)
            if store is not None:
                store.finish(self.circuit_, prep.pool)
        return self

    def fit_loaded(self, loaded: LoadedModel, data: Dataset, target, layers: Sequence[str], **kwargs) -> "NeurFlow":
        """``fit`` on a model and data loaded from specs (``sources``): the images, labels and class
        names (the model's, else the data's) are taken from them; ``kwargs`` are ``fit``'s others."""
        class_names = loaded.class_names or data.class_names
        return self.fit(
            loaded.model, data.images, target, layers, labels=data.labels, class_names=class_names, **kwargs
        )

    # -- the steps of fit ----------------------------------------------------------------------
    def _prepare(self, model, images: ImageSource, target, layers, labels, class_names, leaf_modules, predictions,
                 provenance, timings, quiet: bool = True) -> Prepared:  # fmt: skip
        """The layer graph, the predictions, the class images and their pool, and the run's identity:
        the weights, the class images, the settings, and the model's code (the traced graph, so a
        changed ``forward()`` is not served the old circuit) and spec."""
        cfg = self.config
        graph = LayerGraph(model, layers, leaf_modules, cfg.channel_axis)
        t = time.perf_counter()
        weights = model_hash(model)
        if predictions is not None:
            pred = _check_predictions(predictions, len(images))
            images.unreadable.update(int(i) for i in (pred.classes < 0).nonzero().flatten())  # skipped by that pass
            n_classes = pred.n_classes
        elif cfg.selection == "labelled" and labels is not None:  # no prediction read: one image gives the classes
            pred = None
            n_classes = int(logits(graph.full(), images.take(_first_readable(images))[0], device=cfg.device,
                                  finite=True).shape[1])  # fmt: skip
        else:
            workers = default_workers() if cfg.data_workers is None else cfg.data_workers
            pred = predict(graph.full(), images, weights, graph.code, batch_size=cfg.batch_size, device=cfg.device,
                           workers=workers, cache_dir=cfg.cache_dir, quiet=quiet)  # fmt: skip
            n_classes = pred.n_classes
        target = resolve_target(target, n_classes, class_names)
        class_images, kept = select_class_images(images, pred, labels, target, cfg.selection)
        check = getattr(images, "check_unchanged", None)
        if check is not None:  # a folder rewritten while its class images were read
            check()
        pool = CropPool(class_images, cfg.granularities, cfg.stride_ratio)
        timings["select_s"] = round(time.perf_counter() - t, 3)
        settings = {**cfg.method_dict(), "layers": layers, "target": target}
        code = graph.code + "\n" + str((provenance.model_spec if provenance else None) or "")
        images_hash = hash_tensors([("images", class_images)])
        digest = run_hash(weights, images_hash, settings, code)
        return Prepared(graph, target, class_images, kept, pool, settings, weights, digest, images_hash)

    @staticmethod
    def _store(owned: contextlib.ExitStack, store, out, overwrite: bool, digest: str) -> RunStore | None:
        """The run's store: the one given (it must be for this run), or one created for ``out``
        and owned by ``fit`` (released when it returns or raises)."""
        if store is None and out is not None:
            return owned.enter_context(RunStore(out, digest, overwrite))
        if store is not None and store.digest != digest:
            raise NeurFlowError("store", f"a RunStore for this run (hash {digest})", store.digest)
        return store

    def _layer_loop(self, prep: Prepared, layers: list, store, quiet: bool, timings: dict) -> list:
        """The pool's responses at every layer (one pass), then every layer pair top down."""
        cfg = self.config
        t = time.perf_counter()
        # the adaptive rule reads each lower layer on the whole pool: keep those maps if they fit
        maps: dict = {low: None for low in layers[1:]} if cfg.adaptive_eps is not None else {}
        resp = pool_responses(prep.graph, prep.pool, layers, cfg.batch_size, cfg.device, quiet, finite=True,
                              maps=maps, budget=KEEP_MAPS_BYTES)  # fmt: skip
        classes = resp[layers[0]].shape[1]
        if not 0 <= prep.target < classes:
            raise NeurFlowError("target", f"a class index in 0..{classes - 1}", prep.target)
        _warn_tau_above_width(cfg.tau, {name: int(resp[name].shape[1]) for name in layers[1:]})
        timings["activations_s"] = round(time.perf_counter() - t, 3)
        return fit_layers(cfg, prep.graph, prep.pool, resp, layers, prep.target, store, quiet, maps)

    def _finish(self, model, images, layers, class_names, provenance, prep: Prepared, fitted, timings, t0) -> Circuit:
        """Groups, group edges and the trace over the fitted layers, and the ``Circuit`` with what
        the run records about itself (``Provenance``)."""
        cfg, pool, target = self.config, prep.pool, prep.target
        for layer, _ in fitted:
            timings[f"layer_{layer.name}_s"] = layer.seconds
        t = time.perf_counter()
        final, arrays, traced = assemble(
            fitted, cfg.max_groups, cfg.n_groups, cfg.group_edge_rule, cfg.top_n, cfg.trace_rule
        )
        timings["groups_s"] = round(time.perf_counter() - t, 3)
        arrays["crop_image"] = np.asarray(prep.kept, dtype=np.int64)[pool.image_index]
        arrays["crop_box"] = pool.boxes()
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        names = list(class_names) if class_names else None
        n_read = len(images) - len(images.unreadable)  # the images the run read (unreadable ones skipped)
        prov = provenance or Provenance()
        if prov.data_skipped is not None or images.unreadable:
            prov = prov.replace(data_skipped=(prov.data_skipped or 0) + len(images.unreadable))
        prov = prov.replace(
            model_class=type(model).__name__,
            data_shape=(n_read,) + tuple(images.image_shape),
            neurflow=__version__,
            torch=torch.__version__,
            target_name=names[target] if names and target < len(names) else None,
            class_names=tuple(names) if names else None,
            n_images=n_read,
            n_class_images=int(prep.class_images.shape[0]),
            n_crops=len(pool),
            image_size=pool.size,
            image_channels=int(images.image_shape[0]),
            run_hash=prep.run_hash,
            model_hash=prep.model_hash,
            class_images_hash=prep.images_hash,
            crop_sizes={str(int(s)): int((pool.side == s).sum()) for s in np.unique(pool.side)},
            timings_s=timings,
        )
        if cfg.precision != "fp32":  # the faster arithmetic's agreement with fp32, per layer
            prov = prov.replace(extra={**prov.extra, "precision_agreement": _precision_agreement(fitted)})
        return Circuit(
            target=target,
            layers=tuple(final),
            input_layer=layers[-1],
            trace=tuple(traced),
            settings=frozen_map(prep.settings),
            meta=frozen_map(prov.to_meta()),
            arrays=frozen_map(arrays),
        )


def _settings_signature() -> inspect.Signature:
    """``NeurFlow(config=None, *, tau=16, top_k=50, ...)``: every setting a keyword parameter with its
    default, read off ``NeurFlowConfig`` (what ``help()``, ``inspect`` and tab completion show)."""
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    ]
    params += [
        inspect.Parameter(f.name, kind, default=f.default, annotation=f.type)
        for f in dataclasses.fields(NeurFlowConfig)
    ]
    return inspect.Signature(params)


def _settings_doc() -> str:
    """A numpydoc ``Parameters`` section of the settings, from the fields' help."""
    lines = [
        "",
        "    Parameters",
        "    ----------",
        "    config : NeurFlowConfig, optional",
        "        All settings at once; the keywords below replace single ones.",
    ]
    for f in dataclasses.fields(NeurFlowConfig):
        lines.append(f"    {f.name} : {f.type}, default {f.default!r}")
        lines += textwrap.wrap(f.metadata.get("help", ""), 96, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines) + "\n"


NeurFlow.__init__.__signature__ = _settings_signature()  # type: ignore[attr-defined]
NeurFlow.__doc__ = (NeurFlow.__doc__ or "") + _settings_doc()


def _check_settings(settings: dict) -> None:
    names = [f.name for f in dataclasses.fields(NeurFlowConfig)]
    for name in settings:
        if name not in names:
            raise unknown_name(name, name, names, "the settings are the fields of NeurFlowConfig")


def _checked_layers(layers: Sequence[str], cfg: NeurFlowConfig) -> list:
    """``layers`` as a list, checked before any work."""
    layers = list(layers)
    if len(layers) < 2:
        raise NeurFlowError(
            "layers", "at least two layer names (the class layer, ..., the lowest input layer)", ",".join(layers)
        )
    groups_per_layer(cfg.n_groups, len(layers) - 2)  # a count per layer
    return layers


def _first_readable(images: ImageSource) -> list:
    """The index of the first image the source reads (a one-line error when none is)."""
    images.image_shape  # noqa: B018 - reads images until one is readable (or refuses)
    return [next(i for i in range(len(images)) if i not in images.unreadable)]


def _precision_agreement(fitted: list) -> dict:
    """{layer: the precision_* facts of its completeness gap, without the prefix}."""
    return {
        layer.name: {k[len("precision_") :]: v for k, v in layer.completeness_gap.items() if k.startswith("precision_")}
        for layer, _ in fitted
    }


def _check_predictions(predictions, n: int) -> Predictions:
    """Logits given to ``fit``: ``Predictions`` (NaN rows for unreadable images) or a finite float
    tensor [N, classes], one row per image."""
    if isinstance(predictions, Predictions):
        if predictions.logits.shape[0] != n:
            raise NeurFlowError("predictions", f"predictions of the {n} images", predictions.logits.shape[0])
        return predictions
    if not isinstance(predictions, torch.Tensor) or predictions.ndim != 2 or predictions.shape[0] != n:
        raise NeurFlowError("predictions", f"logits [{n}, classes] for the images", getattr(predictions, "shape", None))
    if not torch.isfinite(predictions).all():
        raise NeurFlowError("predictions", "finite logits", "NaN or inf values")
    return Predictions.of(predictions)


def _warn_tau_above_width(tau: int, widths: dict) -> None:
    """One warning per layer narrower than ``tau`` (its channels are the core candidates): there
    every node's core is the whole layer, which is rarely what was meant."""
    for name, width in widths.items():
        if tau > width:
            log.warning(
                "tau %d is above the %d channels of layer %s: a core there holds at most all %d",
                tau,
                width,
                name,
                width,
            )
