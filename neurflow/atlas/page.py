"""``DIR/atlas.json`` (schema in docs/atlas.md) and ``DIR/index.html``: one self-contained page
(the viewer of ``template.py`` with the atlas's data and the shared neurons' crop thumbnails
inline, nothing loaded from the network)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..artifact import RunDir, atomic_write, write_json
from . import similarity as sim
from .plan import CLASSES, Prepared

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
    from ..artifact import load

    plan = prep.plan
    root = plan.root
    layers = list(plan.layers or ())
    lowers = layers[1:]
    ok = [r for r in results if r["ok"]]
    circuits = [load(r["dir"]) for r in ok]
    classes = []
    for r, c in zip(ok, circuits):
        classes.append(
            {
                "target": r["target"],
                "name": r["name"],
                "dir": Path(r["dir"]).relative_to(root).as_posix(),
                "report": (Path(r["dir"]) / "report.html").relative_to(root).as_posix(),
                "n_class_images": int(c.meta.get("n_class_images", 0)),
                "nodes": {l.name: len(l.nodes) for l in c.layers},
                "input_neurons": len({j for n in c.layers[-1].nodes.values() for j in n.core}) if c.layers else 0,
            }
        )
    weights = [sim.core_weights(c) for c in circuits]
    s, per = sim.similarity(weights, lowers)
    order = sim.cluster_order(s)
    atlas: dict = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": plan.model,
        "data": plan.data,
        "layers": layers,
        "settings": prep.plan.config.method_dict(),
        "classes": classes,
        "failed": [
            {
                "target": r["target"],
                "name": r["name"],
                "dir": Path(r["dir"]).relative_to(root).as_posix(),
                "error": _error_text(r["error"]),
            }
            for r in results
            if not r["ok"]
        ],  # fmt: skip
        "similarity": _matrix(s),
        "similarity_per_layer": {k: _matrix(v) for k, v in per.items()},
        "order": order,
        "confusion": None,
        "confusion_correlation": {"spearman": None, "p_value": None, "pairs": 0, "permutations": 0},
    }
    labels = prep.data.labels  # type: ignore[attr-defined]
    if labels is not None and classes:
        targets = [c["target"] for c in classes]
        predicted = prep.predictions.argmax(1).numpy()  # type: ignore[attr-defined]
        conf, counts = sim.confusion_rates(predicted, np.asarray(labels), targets)
        atlas["confusion"] = {"symmetrised_rate": _matrix(conf), "n_labelled": counts}
        atlas["confusion_correlation"] = sim.spearman_mantel(s, conf)
    incidence, shared, thumbs = {}, {}, {}
    for name in lowers:
        neurons = sorted({j for w in weights for j in w.get(name, {})})
        matrix = [[_r(w.get(name, {}).get(j, 0.0)) for j in neurons] for w in weights]
        incidence[name] = {"neurons": neurons, "weights": matrix}
        members_of = {j: sum(1 for w in weights if j in w.get(name, {})) for j in neurons}
        total = {j: sum(w.get(name, {}).get(j, 0.0) for w in weights) for j in neurons}
        top = sorted(neurons, key=lambda j: (-members_of[j], -total[j], j))[:SHARED_PER_LAYER]
        rows = []
        for j in top:
            members = [i for i, w in enumerate(weights) if j in w.get(name, {})]
            ex = {}
            for i in members[:SHOWN_CLASSES]:
                crops = _display_exemplars(circuits[i], name, j)
                keys = []
                for crop in crops:
                    png = RunDir(ok[i]["dir"]).crop(crop)
                    if png.is_file():
                        key = f"{i}/{crop}"
                        thumbs[key] = png.read_bytes()
                        keys.append(key)
                ex[str(i)] = keys
            rows.append({"neuron": j, "classes": members, "weight": _r(total[j]), "exemplars": ex})
        shared[name] = rows
    atlas["incidence"] = incidence
    atlas["shared"] = shared
    return atlas, thumbs


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
        from ..errors import NeurFlowError

        return str(NeurFlowError(error["parameter"], error["expected"], error["given"], error["hint"]))
    return str(error)


def _script_json(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(atlas: dict, thumbs: dict) -> str:
    from .template import TEMPLATE

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
    root = prep.plan.root
    write_json(root / "atlas.json", atlas)
    atomic_write(root / "index.html", render(atlas, thumbs).encode())
    return atlas


def class_dirs(root) -> list[Path]:
    d = Path(root) / CLASSES
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
