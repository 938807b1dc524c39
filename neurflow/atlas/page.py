"""``DIR/atlas.json`` (schema in docs/atlas.md) and ``DIR/index.html``: one self-contained page
(the viewer of ``template.py`` with the atlas's data and the shared neurons' crop thumbnails
inline, nothing loaded from the network)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..errors import NeurFlowError
from ..store import RunDir, atomic_write, load, write_json
from . import similarity as sim
from .plan import Prepared
from .template import TEMPLATE

SCHEMA = "neurflow.atlas"
SCHEMA_VERSION = 1
SHARED_PER_LAYER = 8  # the neurons shared by the most classes shown per layer
SHOWN_CLASSES = 24  # classes whose exemplars are shown per shared neuron
CROPS_PER_CLASS = 2  # display exemplars shown per class and shared neuron


def _r(x, digits: int = 6):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _matrix(m: np.ndarray) -> list:
    return [[_r(v) for v in row] for row in m]


def build_atlas(prep: Prepared, results: list) -> tuple[dict, dict]:
    """(atlas.json's content, {crop key: PNG bytes} of the page's thumbnails)."""
    plan = prep.plan
    layers = list(plan.layers or ())
    lowers = layers[1:]
    ok = [r for r in results if r["ok"]]
    circuits = [load(r["dir"]) for r in ok]
    classes = [_class_entry(r, c, plan.root) for r, c in zip(ok, circuits)]
    weights = [sim.core_weights(c) for c in circuits]
    s, per = sim.similarity(weights, lowers)
    atlas: dict = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": plan.model,
        "data": plan.data,
        "layers": layers,
        "settings": plan.config.method_dict(),
        "classes": classes,
        "failed": [_failed_entry(r, plan.root) for r in results if not r["ok"]],
        "similarity": _matrix(s),
        "similarity_per_layer": {k: _matrix(v) for k, v in per.items()},
        "order": sim.cluster_order(s),
        "confusion": None,
        "confusion_correlation": {"spearman": None, "p_value": None, "pairs": 0, "permutations": 0},
    }
    _add_confusion(atlas, prep, s)
    thumbs: dict = {}
    atlas["incidence"] = {name: _incidence(weights, name) for name in lowers}
    atlas["shared"] = {name: _shared(weights, circuits, ok, name, thumbs) for name in lowers}
    return atlas, thumbs


def _class_entry(r: dict, c, root: Path) -> dict:
    """A finished class of ``atlas["classes"]``: ``r`` its worker's result, ``c`` its circuit."""
    return {
        "target": r["target"],
        "name": r["name"],
        "dir": Path(r["dir"]).relative_to(root).as_posix(),
        "report": RunDir(r["dir"]).report.relative_to(root).as_posix(),
        "n_class_images": int(c.meta.get("n_class_images", 0)),
        "nodes": {l.name: len(l.nodes) for l in c.layers},
        "input_neurons": len({j for n in c.layers[-1].nodes.values() for j in n.core}) if c.layers else 0,
    }


def _failed_entry(r: dict, root: Path) -> dict:
    """A failed class of ``atlas["failed"]``."""
    return {
        "target": r["target"],
        "name": r["name"],
        "dir": Path(r["dir"]).relative_to(root).as_posix(),
        "error": _error_text(r["error"]),
    }


def _add_confusion(atlas: dict, prep: Prepared, s: np.ndarray) -> None:
    """The model's confusion between the classes, and its agreement with the similarity ``s``
    (left at None when the data has no labels or no class finished)."""
    labels = prep.data.labels  # type: ignore[attr-defined]
    if labels is None or not atlas["classes"]:
        return
    targets = [c["target"] for c in atlas["classes"]]
    predicted = prep.predictions.classes.numpy()  # type: ignore[attr-defined]
    conf, counts = sim.confusion_rates(predicted, np.asarray(labels), targets)
    atlas["confusion"] = {"symmetrised_rate": _matrix(conf), "n_labelled": counts}
    atlas["confusion_correlation"] = sim.spearman_mantel(s, conf)


def _incidence(weights: list, name: str) -> dict:
    """Layer ``name``'s class x neuron matrix of core weights, over every neuron in some class's circuit."""
    neurons = sorted({j for w in weights for j in w.get(name, {})})
    return {"neurons": neurons, "weights": [[_r(w.get(name, {}).get(j, 0.0)) for j in neurons] for w in weights]}


def _shared(weights: list, circuits: list, ok: list, name: str, thumbs: dict) -> list:
    """The ``SHARED_PER_LAYER`` neurons of layer ``name`` shared by the most classes, each with its
    classes' display exemplars (their thumbnails added to ``thumbs``)."""
    neurons = sorted({j for w in weights for j in w.get(name, {})})
    members_of = {j: sum(1 for w in weights if j in w.get(name, {})) for j in neurons}
    total = {j: sum(w.get(name, {}).get(j, 0.0) for w in weights) for j in neurons}
    top = sorted(neurons, key=lambda j: (-members_of[j], -total[j], j))[:SHARED_PER_LAYER]
    rows = []
    for j in top:
        members = [i for i, w in enumerate(weights) if j in w.get(name, {})]
        ex = {str(i): _thumbnail_keys(circuits[i], ok[i]["dir"], i, name, j, thumbs) for i in members[:SHOWN_CLASSES]}
        rows.append({"neuron": j, "classes": members, "weight": _r(total[j]), "exemplars": ex})
    return rows


def _thumbnail_keys(circuit, directory, i: int, layer: str, neuron: int, thumbs: dict) -> list[str]:
    """The keys (``<class>/<crop>``) of class ``i``'s display exemplars of ``neuron`` that have a
    thumbnail in its run directory, the thumbnails added to ``thumbs``."""
    keys = []
    for crop in _display_exemplars(circuit, layer, neuron):
        png = RunDir(directory).crop(crop)
        if png.is_file():
            key = f"{i}/{crop}"
            thumbs[key] = png.read_bytes()
            keys.append(key)
    return keys


def _display_exemplars(circuit, layer: str, neuron: int) -> list[int]:
    """The first display exemplars of ``neuron`` as a node at ``layer`` (none at the input layer)."""
    for l in circuit.layers:
        if l.name == layer and neuron in l.nodes:
            out: list[int] = []
            for sc in l.nodes[neuron].sub_concepts:
                out.extend(int(c) for c in sc.display_exemplars[:1])
            for sc in l.nodes[neuron].sub_concepts:
                out.extend(int(c) for c in sc.display_exemplars[1:])
            return list(dict.fromkeys(out))[:CROPS_PER_CLASS]
    return []


def _error_text(error) -> str:
    if isinstance(error, dict):
        return str(NeurFlowError(error["parameter"], error["expected"], error["given"], error["hint"]))
    return str(error)


def _script_json(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(atlas: dict, thumbs: dict) -> str:
    data = {k: v for k, v in atlas.items() if k != "similarity_per_layer"}
    images = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in thumbs.items()}
    title = html.escape(f"neurflow atlas: {atlas.get('model')} on {atlas.get('data')}")
    return (
        TEMPLATE.replace("__TITLE__", title)
        .replace("__DATA__", _script_json(data))
        .replace("__IMAGES__", _script_json(images))
    )


def write_atlas(prep: Prepared, results: list, seconds: float | None = None) -> dict:
    """Write ``atlas.json`` and ``index.html`` into the plan's directory; returns the atlas."""
    atlas, thumbs = build_atlas(prep, results)
    atlas["seconds"] = None if seconds is None else round(seconds, 1)
    d = prep.plan.dir
    write_json(d.atlas, atlas)
    atomic_write(d.index, render(atlas, thumbs).encode())
    return atlas
