"""``neurflow label``: concept labels for neuron groups, from a small registry of labelers.

* ``vlm`` - an OpenAI-compatible multimodal chat endpoint (``labels/vlm.py``);
* ``annotations`` - offline, from user-supplied image tags (``labels/annotations.py``);
* ``clip`` - CLIP-Dissect style, when open_clip and local weights are present (``labels/clip.py``).

``label_run`` labels the chosen groups (by default the traced ones of every layer below the
class layer), runs the caption check where the labeler can judge crops, captions the relations
of traced groups with the lower groups that feed them where the labeler can, and only then
writes the labels into ``circuit.json`` (atomically, in one step, under the directory's
lock, merged into the circuit as it is then): an error on the way leaves the artifact as it
was.  Register another back-end with ``register(name, "module:Class", help, options)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ...circuit import frozen_map
from ...errors import NeurFlowError, unknown_name
from ...options import LabelOptions
from ...progress import progress
from .base import Label, Labeler, caption_check

log = logging.getLogger(__name__)
LABEL = LabelOptions()  # the defaults of label_run (and of neurflow label's flags)


@dataclass(frozen=True)
class Entry:
    """A registered labeler: ``target`` is "module:Class" (imported when used), ``options`` its
    constructor keywords that a user sets (keyword -> (type, help)); the CLI makes one flag of each."""

    target: str
    help: str
    options: Mapping = field(default_factory=dict)

    def cls(self):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def defaults(self) -> dict:
        """The constructor's default of each option (inspect: the class is the one place for them)."""
        params = inspect.signature(self.cls().__init__).parameters
        return {k: params[k].default for k in self.options if params[k].default is not inspect.Parameter.empty}


LABELERS: dict[str, Entry] = {}


def register(name: str, target: str, help: str = "", options: Mapping | None = None) -> None:
    """Register a labeler class ("package.module:Class", a ``Labeler`` subclass) under ``name``."""
    LABELERS[name] = Entry(target, help, dict(options or {}))


register(
    "vlm",
    "neurflow.analysis.labels.vlm:VLMLabeler",
    "an OpenAI-compatible multimodal chat endpoint",
    {
        "base_url": (str, "OpenAI-compatible API base, e.g. https://api.openai.com/v1, http://localhost:11434/v1"),
        "model": (str, "the multimodal chat model, e.g. gpt-4o"),
        "api_key_env": (str, "environment variable holding the API key"),
        "timeout": (float, "seconds per request"),
        "retries": (int, "retries after a failed request"),
        "backoff": (float, "first retry delay in seconds, doubled each time"),
        "cache_dir": (str, "answer cache (default: $XDG_CACHE_HOME/neurflow/vlm)"),
        "image_size": (int, "longest side of the crops sent, px (default: the model's input size, as it saw them)"),
        "check_prompt": (str, "published: the check says how many images show the caption; blind: it does not"),
    },
)
register(
    "annotations",
    "neurflow.analysis.labels.annotations:AnnotationLabeler",
    "offline, from image tags",
    {"annotations": (str, "CSV or JSON of image tags (optionally boxes), or 'zoo' for zoo data")},
)
register(
    "clip",
    "neurflow.analysis.labels.clip:ClipLabeler",
    "CLIP-Dissect style, with local CLIP weights",
    {
        "clip_model": (str, "open_clip architecture (default: ViT-B-32)"),
        "clip_weights": (str, "local CLIP weights: checkpoint file (open_clip) or model folder (transformers)"),
        "words": (str, "word list, one per line (default: a built-in list of visual words)"),
    },
)


def get_labeler(name: str, **options) -> Labeler:
    """The labeler ``name`` built with ``options`` (unset options: the labeler's defaults)."""
    if name not in LABELERS:
        raise unknown_name("labeler", name, sorted(LABELERS))
    return LABELERS[name].cls()(**options)


def _targets(circuit, which: str, layers) -> list[tuple[int, int]]:
    names = [l.name for l in circuit.layers]
    if layers:
        for n in layers:
            if n not in names[1:]:
                raise unknown_name("layers", n, names[1:], "layers of the circuit below the class layer")
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


def label_run(
    run,
    labeler: Labeler,
    which: str | None = LABEL.groups,
    layers=LABEL.layers,
    check: bool = not LABEL.no_check,
    relations: bool = not LABEL.no_relations,
    seed: int = LABEL.seed,
    quiet: bool = True,
) -> dict:
    """Label the groups of ``run`` and save the labels into its ``circuit.json`` (in one write, once
    everything is computed: an error on the way leaves the artifact as it was).

    Parameters
    ----------
    run : Run or path
        A reopened ``Run``, or a finished run directory (reopened with its recorded model and data).
    labeler : Labeler
        The back-end that captions the groups (``get_labeler``).
    which : str, optional
        ``"traced"`` (the groups of the traced circuit) or ``"all"``; default: the labeler's
        ``default_groups``.
    layers : sequence of str, optional
        The layers to label, each below the class layer; default: every layer below it.
    check : bool
        Run the caption check (precision and recall of the caption on true and random crops)
        where the labeler can judge crops.
    relations : bool
        Caption how each labelled group relates to the lower groups that feed it, where the
        labeler can.
    seed : int
        Seed of the check's random crops.
    quiet : bool
        No progress bar.

    Returns
    -------
    dict
        ``{"labels": n, "relations": n, "labeler": name, "groups": [...]}``: one entry per labelled
        group (its layer, group id, label, check and relation), in the order they were labelled.
    """
    from ..run import Run  # lazy: the labeler registry loads no torch (`neurflow label --help`)

    LabelOptions(seed=seed)  # refuses a seed outside the one range, as the CLI's --seed
    which = which or labeler.default_groups
    if which not in ("traced", "all"):
        raise NeurFlowError("groups", "traced or all", which)
    run = run if isinstance(run, Run) else Run(run)
    c = run.circuit
    jobs = _targets(c, which, layers)
    if not jobs:
        raise NeurFlowError(
            "directory", "a circuit with groups below the class layer", str(run.dir), "rerun with at least three layers"
        )
    run.dir.check_writable()  # a read-only or busy directory is refused before any labelling
    labels = _label_groups(run, labeler, jobs, check, seed, quiet)
    rels = _relations(run, labeler, jobs, labels) if relations and labeler.can_relate else {}
    # everything computed: write once, under the directory's lock, into the circuit as it is now
    # (another label's groups kept), refused when another run replaced the one labelled
    with run.dir.updating():
        run.circuit = with_labels(run.dir.read_circuit(), labels, rels)
        run.dir.write_circuit(run.circuit)
    return {
        "labels": len(labels),
        "relations": len(rels),
        "labeler": labeler.name,
        "groups": [
            {
                "layer": c.layers[i].name,
                "group": gid,
                **labels[(i, gid)].to_json(),
                **({"relation": rels[(i, gid)]} if (i, gid) in rels else {}),
            }
            for i, gid in jobs
        ],
    }


def _label_groups(run, labeler: Labeler, jobs: list, check: bool, seed: int, quiet: bool) -> dict:
    """{(layer index, group id): Label} for every job, each checked where the labeler can judge crops."""
    c = run.circuit
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
        log.debug("%s/G%d: %s", layer.name, gid, lab.text)  # the summary prints the labels (stdout)
        bar.update(1)
    bar.close()
    return labels


def _relations(run, labeler: Labeler, jobs: list, labels: dict) -> dict:
    """{(layer index, group id): relation} for the labelled groups that lower groups feed."""
    c = run.circuit
    rels: dict = {}
    for i, gid in jobs:
        below = feeders(c, i, gid)
        if not below:
            continue
        group = dataclasses.replace(c.layers[i].groups[gid], label=labels[(i, gid)].to_json())
        rels[(i, gid)] = labeler.label_relation(run, c.layers[i], group, c.layers[i + 1], below)
    return rels


def with_labels(circuit, labels: dict, relations: dict):
    """``circuit`` with the labels {(layer index, group id): Label} and relations set on its groups."""
    layers = list(circuit.layers)
    for i, layer in enumerate(layers):
        groups = list(layer.groups)
        for gid, g in enumerate(groups):
            if (i, gid) in labels:
                g = dataclasses.replace(g, label=frozen_map(labels[(i, gid)].to_json()))
            if (i, gid) in relations:
                g = dataclasses.replace(g, relation=frozen_map(relations[(i, gid)]))
            groups[gid] = g
        layers[i] = dataclasses.replace(layer, groups=tuple(groups))
    return dataclasses.replace(circuit, layers=tuple(layers))
