"""``neurflow label``: concept labels for neuron groups, from a small registry of labelers.

* ``vlm`` - an OpenAI-compatible multimodal chat endpoint (``labels/vlm.py``);
* ``annotations`` - offline, from user-supplied image tags (``labels/annotations.py``);
* ``clip`` - CLIP-Dissect style, when open_clip and local weights are present (``labels/clip.py``).

``label_run`` labels the chosen groups (by default the traced ones of every layer below the
class layer), runs the caption check where the labeler can judge crops, captions the relations
of traced groups with the lower groups that feed them where the labeler can, and only then
writes the labels into ``circuit.json`` (atomically, in one step): an error on the way leaves the
artifact as it was.  Register another back-end with ``register(name, cls)``.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from ..artifact import write_json
from ..errors import NeurFlowError, unknown_name
from ..progress import progress
from .base import Label, Labeler, RunView, caption_check

log = logging.getLogger(__name__)

LABELERS: dict = {}


def register(name: str, factory) -> None:
    LABELERS[name] = factory


def _vlm(**kw):
    from .vlm import VLMLabeler
    return VLMLabeler(**kw)


def _annotations(**kw):
    from .annotations import AnnotationLabeler
    return AnnotationLabeler(**kw)


def _clip(**kw):
    from .clip import ClipLabeler
    return ClipLabeler(**kw)


register("vlm", _vlm)
register("annotations", _annotations)
register("clip", _clip)


def get_labeler(name: str, **options) -> Labeler:
    if name not in LABELERS:
        raise unknown_name("--labeler", name, sorted(LABELERS))
    return LABELERS[name](**options)


def _targets(circuit, which: str, layers) -> list[tuple[int, int]]:
    names = [l.name for l in circuit.layers]
    if layers:
        for n in layers:
            if n not in names[1:]:
                raise unknown_name("--layers", n, names[1:], "layers of the circuit below the class layer")
    traced = dict(circuit.trace)
    out = []
    for i, layer in enumerate(circuit.layers):
        if i == 0 or (layers and layer.name not in layers):
            continue
        ids = [g.id for g in layer.groups] if which == "all" else list(traced.get(layer.name, ()))
        out += [(i, g) for g in ids]
    return out


def feeders(circuit, i: int, gid: int, k: int = 3) -> list:
    """The (at most ``k``) groups of the next layer down with the largest positive edge weight from
    group ``gid`` of layer ``i``."""
    if i + 1 >= len(circuit.layers):
        return []
    row = circuit.layers[i].group_edges.get(gid, {})
    best = sorted((g for g, w in row.items() if w > 0), key=lambda g: (-row[g], g))[:k]
    lower = circuit.layers[i + 1]
    return [lower.groups[g] for g in best]


def label_run(directory, labeler: Labeler, which: str | None = None, layers=None, check: bool = True,
              relations: bool = True, seed: int = 0, quiet: bool = True) -> dict:
    """Label the groups of the run in ``directory`` (``which``: "traced" or "all", default the
    labeler's ``default_groups``); returns {"labels": n, "relations": n, "groups": [...]}."""
    which = which or labeler.default_groups
    if which not in ("traced", "all"):
        raise NeurFlowError("--groups", "traced or all", which)
    run = RunView(directory)
    c = run.circuit
    jobs = _targets(c, which, layers)
    if not jobs:
        raise NeurFlowError("DIR", "a circuit with groups below the class layer", str(directory),
                            "rerun with at least three layers")
    rng = np.random.RandomState(seed)
    labels: dict = {}
    bar = progress(total=len(jobs), desc=f"label ({labeler.name})", quiet=quiet, unit="group")
    for i, gid in jobs:
        layer = c.layers[i]
        group = layer.groups[gid]
        lab = labeler.label_group(run, layer, group)
        if check and labeler.can_check:
            result = caption_check(labeler, run, layer, group, lab.text, rng)
            conf = lab.confidence
            if conf is None:  # the check's F1 stands in when the labeler gives no confidence
                p, r = result["precision"], result["recall"]
                conf = 2 * p * r / (p + r) if p + r else 0.0
            lab = Label(lab.text, lab.labeler, conf, lab.evidence, result)
        labels[(i, gid)] = lab
        log.info("%s/G%d: %s", layer.name, gid, lab.text)
        bar.update(1)
    bar.close()
    rels: dict = {}
    if relations and labeler.can_relate:
        import dataclasses
        for i, gid in jobs:
            below = feeders(c, i, gid)
            if not below:
                continue
            group = dataclasses.replace(c.layers[i].groups[gid], label=labels[(i, gid)].to_json())
            rels[(i, gid)] = labeler.label_relation(run, c.layers[i], group, c.layers[i + 1], below)
    # everything computed: write once
    path = run.dir / "circuit.json"
    doc = json.loads(path.read_text())
    for (i, gid), lab in labels.items():
        doc["layers"][i]["groups"][gid]["label"] = lab.to_json()
    for (i, gid), rel in rels.items():
        doc["layers"][i]["groups"][gid]["relation"] = rel
    write_json(path, doc)
    return {"labels": len(labels), "relations": len(rels), "labeler": labeler.name,
            "groups": [{"layer": c.layers[i].name, "group": gid, **labels[(i, gid)].to_json(),
                        **({"relation": rels[(i, gid)]} if (i, gid) in rels else {})} for i, gid in jobs]}
