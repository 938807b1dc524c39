"""``NeurFlow``: the estimator that runs the whole top-down pass (scikit-learn style)."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .artifact import RunStore, hash_tensors, model_hash, run_hash
from .circuit import Circuit, Layer, _frozen_map
from .config import NeurFlowConfig
from .core import adaptive_lengths, attribute, fit_node, rank_core, top_exemplars
from .crops import CropPool
from .data import predict, select_class_images, thumbnails
from .errors import NeurFlowError
from .groups import group_edges, layer_groups, trace
from .layers import LayerGraph, preserved, response
from .progress import progress

log = logging.getLogger(__name__)


def resolve_target(target, n_classes: int | None, class_names: Sequence[str] | None) -> int:
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        names = list(class_names or [])
        if target in names:
            return names.index(target)
        lower = [n.lower() for n in names]
        if target.lower() in lower:
            return lower.index(target.lower())
        from .errors import unknown_name
        if not names:
            raise NeurFlowError("--target", "a class index (this model declares no class names)", target)
        raise unknown_name("--target", target, names, "use a class index or one of the model's class names")
    t = int(target)
    if n_classes is not None and not 0 <= t < n_classes:
        raise NeurFlowError("--target", f"a class index in 0..{n_classes - 1}", t)
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

    def fit(self, model: nn.Module, images: torch.Tensor, target, layers: Sequence[str],
            labels: torch.Tensor | None = None, class_names: Sequence[str] | None = None,
            out=None, overwrite: bool = False, quiet: bool = True, leaf_modules: Sequence[type] = (),
            meta: dict | None = None) -> "NeurFlow":
        cfg = self.config
        t0 = time.perf_counter()
        layers = list(layers)
        if len(layers) < 2:
            raise NeurFlowError("layers", "at least two layer names (the class layer, ..., the lowest input layer)",
                                ",".join(layers))
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise NeurFlowError("images", "a float tensor [N, C, H, W]", getattr(images, "shape", type(images)))
        timings: dict = {}
        # seeded without touching the caller's global generator
        with torch.random.fork_rng(devices=[]), preserved(model, freeze=True):
            torch.manual_seed(cfg.seed)
            graph = LayerGraph(model, layers, leaf_modules)
            device = torch.device(cfg.device)
            moved = _move(model, device)
            try:
                circuit = self._fit(model, graph, images, target, layers, labels, class_names, out,
                                    overwrite, quiet, timings, meta or {})
            finally:
                _restore(moved)
        if self.reused_:
            self.circuit_ = circuit
            return self
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        self.circuit_ = dataclasses.replace(
            circuit, meta=_frozen_map({**circuit.meta, "timings_s": timings}))
        if out is not None:
            self.store_.finish(self.circuit_, self.thumbnails_)
        return self

    # ------------------------------------------------------------------------------------
    def _fit(self, model, graph, images, target, layers, labels, class_names, out, overwrite, quiet,
             timings, meta) -> Circuit:
        cfg = self.config
        t = time.perf_counter()
        full = graph.full()
        logits = predict(full, images, cfg.batch_size, cfg.device)
        n_classes = logits.shape[1] if logits.ndim == 2 else None
        target = resolve_target(target, n_classes, class_names)
        class_images, kept = select_class_images(images, logits, labels, target, cfg.selection)
        pool = CropPool(class_images, cfg.granularities, cfg.stride_ratio)
        timings["select_s"] = round(time.perf_counter() - t, 3)

        settings = {**cfg.method_dict(), "layers": layers, "target": target}
        model_digest = model_hash(model)
        digest = run_hash(model_digest, hash_tensors([("images", class_images)]), settings)
        store = RunStore(out, digest, overwrite) if out is not None else None
        self.store_ = store
        self.pool_ = pool
        self.reused_ = bool(store is not None and store.complete)
        if self.reused_:  # the same run is already finished in ``out``: nothing to recompute
            log.info("%s already holds this finished run; loading it", out)
            from .artifact import load
            return load(out)

        # one activation pass over the pool: the responses of every analysed layer
        t = time.perf_counter()
        recorder = graph.recorder(layers)
        resp = {name: [] for name in layers}
        bar = progress(total=len(pool), desc="activations", quiet=quiet, unit="crop")
        with torch.no_grad():
            for idx, crops in pool.batches(cfg.batch_size):
                outs = recorder(crops.to(cfg.device))
                for name, o in zip(layers, outs):
                    resp[name].append(response(o).float().cpu())
                bar.update(len(idx))
        bar.close()
        resp = {k: torch.cat(v).numpy() for k, v in resp.items()}
        for name, r in resp.items():
            if not np.isfinite(r).all():
                raise NeurFlowError("model", "finite activations", f"NaN or inf at layer {name}",
                                    "check the model's weights and the input transform")
        if not 0 <= target < resp[layers[0]].shape[1]:
            raise NeurFlowError("--target", f"a class index in 0..{resp[layers[0]].shape[1] - 1}", target)
        timings["activations_s"] = round(time.perf_counter() - t, 3)

        done = store.load_layers() if store is not None else []
        fitted: list[tuple[Layer, dict]] = list(done)
        nodes = [target]
        if fitted:
            nodes = _next_nodes(fitted[-1][0])
            log.info("resuming: %d layer(s) already done", len(fitted))
        for i in range(len(fitted), len(layers) - 1):
            upper, lower = layers[i], layers[i + 1]
            t = time.perf_counter()
            layer, arrays = self._fit_layer(graph, pool, resp, upper, lower, nodes, quiet)
            layer = dataclasses.replace(layer, seconds=round(time.perf_counter() - t, 3))
            fitted.append((layer, arrays))
            if store is not None:
                store.save_layer(layer, arrays)
            nodes = _next_nodes(layer)
        for layer, _ in fitted:
            timings[f"layer_{layer.name}_s"] = layer.seconds

        # groups, group-to-group weights, tracing
        t = time.perf_counter()
        final_layers, arrays = [], {}
        for i, (layer, arr) in enumerate(fitted):
            keys = [tuple(k) for k in arr["keys"]]
            labels_, groups = layer_groups(keys, arr["vectors"], cfg.max_groups, cfg.n_groups, single=(i == 0))
            nodes_ = {}
            for (n, s), g in zip(keys, labels_):
                nodes_.setdefault(n, []).append((s, int(g)))
            new_nodes = {}
            for n, node in layer.nodes.items():
                gmap = dict(nodes_.get(n, []))
                subs = tuple(dataclasses.replace(sc, group=gmap.get(sc.id)) for sc in node.sub_concepts)
                new_nodes[n] = dataclasses.replace(node, sub_concepts=subs)
            final_layers.append(dataclasses.replace(layer, nodes=_frozen_map(new_nodes), groups=tuple(groups)))
            arrays[f"concept_keys/{layer.name}"] = arr["keys"]
            arrays[f"concept_vectors/{layer.name}"] = arr["vectors"]
        for i in range(len(final_layers) - 1):
            edges = group_edges(final_layers[i], final_layers[i + 1], cfg.group_edge_rule)
            final_layers[i] = dataclasses.replace(final_layers[i], group_edges=_frozen_map(edges))
        traced = trace(final_layers, cfg.top_n)
        timings["groups_s"] = round(time.perf_counter() - t, 3)

        arrays["crop_image"] = np.asarray(kept, dtype=np.int64)[pool.image_index]
        arrays["crop_box"] = pool.boxes()
        shown = sorted({c for l in final_layers for n in l.nodes.values() for s in n.sub_concepts
                        for c in s.display_exemplars})
        self.thumbnails_ = thumbnails(pool, shown) if store is not None else {}
        self.responses_ = resp
        meta = {"model": type(model).__name__, "data": f"tensor {list(images.shape)}", **meta, "neurflow": __version__, "torch": torch.__version__, "target_name":
                (list(class_names)[target] if class_names and target < len(class_names) else None),
                "n_images": int(images.shape[0]), "n_class_images": int(class_images.shape[0]),
                "n_crops": len(pool), "image_size": pool.size, "image_channels": int(images.shape[1]),
                "run_hash": digest, "model_hash": model_digest,
                "class_names": list(class_names) if class_names else None,
                "crop_sizes": {str(int(s)): int((pool.side == s).sum()) for s in np.unique(pool.side)}}
        return Circuit(target=target, layers=tuple(final_layers), input_layer=layers[-1],
                       trace=tuple(traced), settings=_frozen_map(settings), meta=_frozen_map(meta),
                       arrays=_frozen_map(arrays))

    def _fit_layer(self, graph, pool, resp, upper, lower, nodes, quiet) -> tuple[Layer, dict]:
        cfg = self.config
        r_up, r_low = resp[upper], resp[lower]
        exemplars = {n: top_exemplars(r_up, n, cfg.top_k) for n in nodes}
        scores, gaps = attribute(graph, pool, upper, lower, exemplars, cfg, quiet)
        ranked, imps = {}, {}
        for n in nodes:
            order, imp = rank_core(scores[n])
            ranked[n], imps[n] = order[: min(cfg.tau, len(order))], imp
        if cfg.adaptive_eps is not None:
            lengths = adaptive_lengths(graph, pool, upper, lower, ranked, exemplars, cfg.adaptive_eps, cfg, quiet)
            ranked = {n: ranked[n][: lengths[n]] for n in nodes}
        out_nodes, keys, vectors = {}, [], []
        for n in nodes:
            fit = fit_node(n, scores[n], exemplars[n], ranked[n], imps[n], r_up, r_low, cfg)
            out_nodes[n] = fit.node
            for sc, v in zip(fit.node.sub_concepts, fit.vectors):
                keys.append((n, sc.id))
                vectors.append(v)
        gap = {"mean_abs": float(gaps[:, 0].mean()) if len(gaps) else 0.0,
               "max_abs": float(gaps[:, 0].max()) if len(gaps) else 0.0,
               "mean_abs_delta": float(gaps[:, 1].mean()) if len(gaps) else 0.0}
        gap["relative"] = gap["mean_abs"] / gap["mean_abs_delta"] if gap["mean_abs_delta"] > 0 else 0.0
        layer = Layer(name=upper, lower=lower, nodes=_frozen_map(out_nodes), completeness_gap=_frozen_map(gap))
        return layer, {"keys": np.asarray(keys, dtype=np.int64).reshape(-1, 2), "vectors": np.stack(vectors)}


def _next_nodes(layer: Layer) -> list[int]:
    return sorted({j for node in layer.nodes.values() for j in node.core})


def _move(model: nn.Module, device: torch.device) -> list:
    moved = []
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device:
            moved.append((t, t.data, t.device))
    if moved:
        model.to(device)
    return [(t, dev) for t, _, dev in moved]


def _restore(moved: list) -> None:
    for t, dev in moved:
        t.data = t.data.to(dev)
