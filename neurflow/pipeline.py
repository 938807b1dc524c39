"""``NeurFlow``: the estimator that runs the whole top-down pass (scikit-learn style).

``fit`` computes; saving and resuming go through an explicit ``RunStore`` (``out=`` is the
convenience that creates one).  The steps, top down: the class images (one prediction pass), the
crop pool's responses at every analysed layer (one pass), then per layer the exemplars, IG, the
core neurons and sub-concepts (``core``), then groups, group edges and the trace (``groups``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .artifact import RunStore, hash_tensors, model_hash, run_hash
from .circuit import Circuit, Layer, _frozen_map
from .completeness import gap_warnings
from .config import KEEP_MAPS_BYTES, PRECISION_CHECK_NODES, NeurFlowConfig, groups_per_layer
from .core import adaptive_lengths, attribute, choose_steps, fit_node, rank_core, top_exemplars
from .crops import CropPool
from .data import select_class_images
from .errors import NeurFlowError, unknown_name
from .groups import assemble
from .layers import LayerGraph
from .probe import logits, on_device, pool_responses, preserved, threads
from .provenance import Provenance

log = logging.getLogger(__name__)


def resolve_target(target, n_classes: int | None, class_names: Sequence[str] | None) -> int:
    """A class index from an index or a class name (case-insensitive)."""
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        names = list(class_names or [])
        if target in names:
            return names.index(target)
        lower = [n.lower() for n in names]
        if target.lower() in lower:
            return lower.index(target.lower())
        if not names:
            raise NeurFlowError("target", "a class index (this model declares no class names)", target)
        raise unknown_name("target", target, names, "use a class index or one of the model's class names")
    t = int(target)
    if n_classes is not None and not 0 <= t < n_classes:
        raise NeurFlowError("target", f"a class index in 0..{n_classes - 1}", t)
    return t


class NeurFlow:
    """Explain one class of a classifier as a NeurFlow circuit.

    ``NeurFlow(tau=16, top_k=50, ...)`` stores settings only (see ``NeurFlowConfig``);
    ``fit(model, images, target=..., layers=[...])`` computes the circuit into ``circuit_``.
    ``layers`` are module names top down, the class layer first; the last one is the lowest
    *input* layer (its channels are core neurons of the layer above, never nodes).
    """

    def __init__(self, config: NeurFlowConfig | None = None, **settings):
        base = config or NeurFlowConfig()
        self.config = dataclasses.replace(base, **settings) if settings else base

    def get_params(self) -> dict:
        return self.config.to_dict()

    def fit(
        self,
        model: nn.Module,
        images: torch.Tensor,
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
        """Compute the circuit into ``circuit_``; returns ``self``.

        ``store``: where layers are saved as they finish and a matching run is resumed or
        reloaded (``out=DIR`` creates ``RunStore(DIR, ..., overwrite)``).  ``provenance``: the
        specs that reopen the model and data (``model_spec``, ``weights``, ``data_spec``, ...),
        recorded in ``circuit.json``; the rest is filled in here.  ``predictions``: the model's
        logits on ``images`` when already computed (``neurflow atlas`` shares one prediction pass
        among its classes); computed here when None."""
        cfg = self.config
        t0 = time.perf_counter()
        layers = list(layers)
        if len(layers) < 2:
            raise NeurFlowError(
                "layers", "at least two layer names (the class layer, ..., the lowest input layer)", ",".join(layers)
            )
        groups_per_layer(cfg.n_groups, len(layers) - 2)  # a count per layer: checked before any work
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise NeurFlowError("images", "a float tensor [N, C, H, W]", getattr(images, "shape", type(images)))
        timings: dict = {}
        # seeded without touching the caller's global generator
        with (
            torch.random.fork_rng(devices=[]),
            preserved(model, freeze=True),
            on_device(model, cfg.device),
            threads(cfg.threads),
        ):
            torch.manual_seed(cfg.seed)
            graph = LayerGraph(model, layers, leaf_modules, cfg.channel_axis)
            t = time.perf_counter()
            pred = (
                logits(graph.full(), images, batch_size=cfg.batch_size, device=cfg.device, finite=True)
                if predictions is None
                else _check_predictions(predictions, images)
            )
            target = resolve_target(target, pred.shape[1], class_names)
            class_images, kept = select_class_images(images, pred, labels, target, cfg.selection)
            pool = CropPool(class_images, cfg.granularities, cfg.stride_ratio)
            timings["select_s"] = round(time.perf_counter() - t, 3)

            settings = {**cfg.method_dict(), "layers": layers, "target": target}
            model_digest = model_hash(model)
            # the run's identity: weights, class images, settings, and the model's code (the traced
            # graph, so a changed forward() is not served the old circuit) and spec
            code = graph.code + "\n" + str((provenance.model_spec if provenance else None) or "")
            digest = run_hash(model_digest, hash_tensors([("images", class_images)]), settings, code)
            if store is None and out is not None:
                store = RunStore(out, digest, overwrite)
            elif store is not None and store.digest != digest:
                raise NeurFlowError("store", f"a RunStore for this run (hash {digest})", store.digest)
            finished = store.finished() if store is not None else None
            if finished is not None:  # the same run is already finished there: nothing to recompute
                self.circuit_ = finished
                return self

            t = time.perf_counter()
            # the adaptive rule reads each lower layer on the whole pool: keep those maps if they fit
            maps: dict = {low: None for low in layers[1:]} if cfg.adaptive_eps is not None else {}
            resp = pool_responses(graph, pool, layers, cfg.batch_size, cfg.device, quiet, finite=True,
                                  maps=maps, budget=KEEP_MAPS_BYTES)  # fmt: skip
            if not 0 <= target < resp[layers[0]].shape[1]:
                raise NeurFlowError("target", f"a class index in 0..{resp[layers[0]].shape[1] - 1}", target)
            _warn_tau_above_width(cfg.tau, {name: int(resp[name].shape[1]) for name in layers[1:]})
            timings["activations_s"] = round(time.perf_counter() - t, 3)
            fitted = self._fit_layers(graph, pool, resp, layers, target, store, quiet, maps)

        for layer, _ in fitted:
            timings[f"layer_{layer.name}_s"] = layer.seconds
        t = time.perf_counter()
        final, arrays, traced = assemble(
            fitted, cfg.max_groups, cfg.n_groups, cfg.group_edge_rule, cfg.top_n, cfg.trace_rule
        )
        timings["groups_s"] = round(time.perf_counter() - t, 3)
        arrays["crop_image"] = np.asarray(kept, dtype=np.int64)[pool.image_index]
        arrays["crop_box"] = pool.boxes()
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        names = list(class_names) if class_names else None
        prov = (provenance or Provenance()).replace(
            model_class=type(model).__name__,
            data_shape=tuple(images.shape),
            neurflow=__version__,
            torch=torch.__version__,
            target_name=names[target] if names and target < len(names) else None,
            class_names=tuple(names) if names else None,
            n_images=int(images.shape[0]),
            n_class_images=int(class_images.shape[0]),
            n_crops=len(pool),
            image_size=pool.size,
            image_channels=int(images.shape[1]),
            run_hash=digest,
            model_hash=model_digest,
            crop_sizes={str(int(s)): int((pool.side == s).sum()) for s in np.unique(pool.side)},
            timings_s=timings,
        )
        if cfg.precision != "fp32":  # the faster arithmetic's agreement with fp32, per layer
            agreement = {
                layer.name: {
                    k[len("precision_") :]: v for k, v in layer.completeness_gap.items() if k.startswith("precision_")
                }
                for layer, _ in fitted
            }
            prov = prov.replace(extra={**prov.extra, "precision_agreement": agreement})
        self.circuit_ = Circuit(
            target=target,
            layers=tuple(final),
            input_layer=layers[-1],
            trace=tuple(traced),
            settings=_frozen_map(settings),
            meta=_frozen_map(prov.to_meta()),
            arrays=_frozen_map(arrays),
        )
        if store is not None:
            store.finish(self.circuit_, pool)
        return self

    # ------------------------------------------------------------------------------------
    def _fit_layers(self, graph, pool, resp, layers, target, store, quiet, maps=None) -> list:
        """Every analysed layer top down, resumed from ``store`` and saved there as each finishes."""
        fitted: list[tuple[Layer, dict]] = list(store.load_layers()) if store is not None else []
        nodes = _next_nodes(fitted[-1][0]) if fitted else [target]
        for i in range(len(fitted), len(layers) - 1):
            t = time.perf_counter()
            layer, arrays = self._fit_layer(graph, pool, resp, layers[i], layers[i + 1], nodes, quiet, maps or {})
            layer = dataclasses.replace(layer, seconds=round(time.perf_counter() - t, 3))
            fitted.append((layer, arrays))
            if store is not None:
                store.save_layer(layer, arrays)
            nodes = _next_nodes(layer)
        return fitted

    def _fit_layer(self, graph, pool, resp, upper, lower, nodes, quiet, maps) -> tuple[Layer, dict]:
        cfg = self.config
        r_up, r_low = resp[upper], resp[lower]
        exemplars = {n: top_exemplars(r_up, n, cfg.top_k) for n in nodes}
        steps = choose_steps(graph, pool, upper, lower, exemplars, cfg) if cfg.ig_steps == "auto" else int(cfg.ig_steps)
        scores, gaps = attribute(graph, pool, upper, lower, exemplars, cfg, quiet, steps)
        ranked, imps = {}, {}
        for n in nodes:
            order, imp = rank_core(scores[n])
            ranked[n], imps[n] = order[: min(cfg.tau, len(order))], imp
        facts = _gap(gaps)
        zero = [n for n in nodes if not np.any(imps[n])]  # no attribution at all: the core is tie order
        facts["zero_attribution_nodes"] = float(len(zero))
        _warn_completeness(upper, lower, facts, zero)
        if cfg.ig_steps == "auto":
            facts["ig_steps"] = float(steps)
        if cfg.precision != "fp32":
            facts.update(self._precision_check(graph, pool, upper, lower, exemplars, ranked, steps))
        if cfg.adaptive_eps is not None:
            kept = maps.pop(lower, None)  # used once: freed as the pass goes down
            lengths = adaptive_lengths(graph, pool, upper, lower, ranked, exemplars, cfg.adaptive_eps, cfg, quiet, kept)
            ranked = {n: ranked[n][: lengths[n]] for n in nodes}
        out_nodes, keys, vectors = {}, [], []
        for n in nodes:
            fit = fit_node(n, scores[n], exemplars[n], ranked[n], imps[n], r_up, r_low, cfg)
            out_nodes[n] = fit.node
            for sc, v in zip(fit.node.sub_concepts, fit.vectors):
                keys.append((n, sc.id))
                vectors.append(v)
        layer = Layer(name=upper, lower=lower, nodes=_frozen_map(out_nodes), completeness_gap=_frozen_map(facts))
        return layer, {"keys": np.asarray(keys, dtype=np.int64).reshape(-1, 2), "vectors": np.stack(vectors)}

    def _precision_check(self, graph, pool, upper, lower, exemplars, ranked, steps) -> dict:
        """A faster ``precision``'s agreement with fp32 at one layer: the core sets of up to
        ``PRECISION_CHECK_NODES`` nodes recomputed in fp32 (the run's facts, per layer)."""
        cfg = self.config
        sample = sorted(ranked)[:PRECISION_CHECK_NODES]
        exact = dataclasses.replace(cfg, precision="fp32")
        scores, _ = attribute(graph, pool, upper, lower, {n: exemplars[n] for n in sample}, exact, True, steps)
        same_order = same_set = 0
        jaccard = []
        for n in sample:
            ref = rank_core(scores[n])[0][: len(ranked[n])]
            same_order += int(np.array_equal(ref, ranked[n]))
            a, b = set(ref.tolist()), set(ranked[n].tolist())
            same_set += int(a == b)
            jaccard.append(len(a & b) / max(1, len(a | b)))
        m = max(1, len(sample))
        return {
            "precision_nodes_checked": float(len(sample)),
            "precision_identical_ordered": same_order / m,
            "precision_identical_sets": same_set / m,
            "precision_mean_jaccard": float(np.mean(jaccard)) if jaccard else 1.0,
        }


def _check_predictions(predictions, images: torch.Tensor) -> torch.Tensor:
    """Logits given to ``fit``: a finite float tensor [N, classes], one row per image."""
    if not isinstance(predictions, torch.Tensor) or predictions.ndim != 2 or predictions.shape[0] != images.shape[0]:
        raise NeurFlowError(
            "predictions", f"logits [{images.shape[0]}, classes] for the images", getattr(predictions, "shape", None)
        )
    if not torch.isfinite(predictions).all():
        raise NeurFlowError("predictions", "finite logits", "NaN or inf values")
    return predictions


def _gap(gaps: np.ndarray) -> dict:
    """The layer's completeness-gap statistics (absolute and relative to |h(A) - h(0)|)."""
    gap = {
        "mean_abs": float(gaps[:, 0].mean()) if len(gaps) else 0.0,
        "max_abs": float(gaps[:, 0].max()) if len(gaps) else 0.0,
        "mean_abs_delta": float(gaps[:, 1].mean()) if len(gaps) else 0.0,
    }
    gap["relative"] = gap["mean_abs"] / gap["mean_abs_delta"] if gap["mean_abs_delta"] > 0 else 0.0
    return gap


def _warn_completeness(upper: str, lower: str, facts: dict, zero: list) -> None:
    """A warning per problem of a finished layer: a relative completeness gap above the threshold,
    and the nodes whose attributions are all zero (named, the first 20)."""
    for text in gap_warnings(facts):
        log.warning("layer %s (attributions to %s): %s", upper, lower, text)
    if zero:
        names = ", ".join(map(str, zero[:20])) + (f", ... ({len(zero)} in all)" if len(zero) > 20 else "")
        log.warning("layer %s: all-zero attributions at node(s) %s", upper, names)


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


def _next_nodes(layer: Layer) -> list[int]:
    return sorted({j for node in layer.nodes.values() for j in node.core})
