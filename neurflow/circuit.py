"""The results: frozen dataclasses that round-trip through JSON (+ arrays) without the model.

Contract (other tools read it): ``Circuit.target`` (class index), ``Circuit.layers`` top down,
the class layer first; each ``Layer`` has ``name``, ``nodes`` (neuron index -> ``Node`` with
``core`` and ``sub_concepts``; each ``SubConcept`` has ``exemplars``, ``display_exemplars``,
``activation`` and ``weights``) and ``groups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from .config import COMPLETENESS_WARN_RELATIVE, NeurFlowConfig
from .errors import NeurFlowError, unknown_name
from .provenance import Provenance


def frozen_map(d) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class SubConcept:
    id: int
    exemplars: tuple  # crop indices of the members, in rank order
    display_exemplars: tuple  # at most 5 members nearest the centre (core coordinates), rank order
    activation: float  # mean response of the node over the members
    weights: Mapping  # lower neuron index -> edge weight (normalised)
    raw_weights: Mapping  # lower neuron index -> mean IG over the members (signed)
    group: int | None = None  # layer group this sub-concept belongs to

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "exemplars": list(self.exemplars),
            "display_exemplars": list(self.display_exemplars),
            "activation": self.activation,
            "weights": {str(k): v for k, v in self.weights.items()},
            "raw_weights": {str(k): v for k, v in self.raw_weights.items()},
            "group": self.group,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "sub_concept") -> "SubConcept":
        d = _obj(d, where)
        group = d.get("group")
        return cls(
            _int(_get(d, "id", where), f"{where}.id"),
            _ints(_get(d, "exemplars", where), f"{where}.exemplars"),
            _ints(_get(d, "display_exemplars", where), f"{where}.display_exemplars"),
            _num(_get(d, "activation", where), f"{where}.activation"),
            _weights(_get(d, "weights", where), f"{where}.weights"),
            _weights(d.get("raw_weights", {}), f"{where}.raw_weights"),
            None if group is None else _int(group, f"{where}.group"),
        )


@dataclass(frozen=True)
class Node:
    index: int
    core: tuple  # ranked lower-layer neuron indices, best first
    sub_concepts: tuple  # SubConcept, ...
    exemplars: tuple  # the node's top-k crops, best first
    importance: tuple  # mean |IG| over the exemplars of each core neuron (same order)

    def to_json(self) -> dict:
        return {
            "core": list(self.core),
            "importance": list(self.importance),
            "exemplars": list(self.exemplars),
            "sub_concepts": [s.to_json() for s in self.sub_concepts],
        }

    @classmethod
    def from_json(cls, index: int, d: dict, where: str = "node") -> "Node":
        d = _obj(d, where)
        subs = _list(_get(d, "sub_concepts", where), f"{where}.sub_concepts")
        return cls(
            index,
            _ints(_get(d, "core", where), f"{where}.core"),
            tuple(SubConcept.from_json(s, f"{where}.sub_concepts[{j}]") for j, s in enumerate(subs)),
            _ints(_get(d, "exemplars", where), f"{where}.exemplars"),
            tuple(_number(v, f"{where}.importance") for v in _list(d.get("importance", []), f"{where}.importance")),
        )


@dataclass(frozen=True)
class Group:
    id: int
    members: tuple  # ((neuron, sub_concept), ...) ordered by distance to the centre
    neurons: tuple  # distinct member neurons, same order
    label: Mapping | None = None  # {"text", "labeler", "confidence", "evidence", "check"} (neurflow label)
    relation: Mapping | None = None  # {"text", "labeler", "lower": [group ids], ...}: how the lower groups feed it

    def to_json(self) -> dict:
        d = {"id": self.id, "members": [list(m) for m in self.members], "neurons": list(self.neurons)}
        if self.label is not None:
            d["label"] = _plain(self.label)
        if self.relation is not None:
            d["relation"] = _plain(self.relation)
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "group") -> "Group":
        d = _obj(d, where)
        label = d.get("label")
        if isinstance(label, str):  # a bare caption
            label = {"text": label}
        members = _list(_get(d, "members", where), f"{where}.members")
        for m in members:
            if not (isinstance(m, list) and len(m) == 2):
                raise malformed(f"{where}.members", "pairs [neuron, sub-concept]")
        relation = d.get("relation")
        return cls(
            _int(_get(d, "id", where), f"{where}.id"),
            tuple(_ints(m, f"{where}.members") for m in members),
            _ints(_get(d, "neurons", where), f"{where}.neurons"),
            frozen_map(_label(label, f"{where}.label")) if label is not None else None,
            frozen_map(_relation(relation, f"{where}.relation")) if relation is not None else None,
        )

    @property
    def label_text(self) -> str | None:
        return None if self.label is None else self.label.get("text")


@dataclass(frozen=True)
class Layer:
    name: str
    lower: str  # the layer whose channels are this layer's core neurons
    nodes: Mapping  # neuron index -> Node
    groups: tuple = ()  # Group, ...
    group_edges: Mapping = field(default_factory=dict)  # group -> {lower group -> weight}
    completeness_gap: Mapping = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "lower": self.lower,
            "nodes": {str(k): n.to_json() for k, n in self.nodes.items()},
            "groups": [g.to_json() for g in self.groups],
            "group_edges": {str(a): {str(b): w for b, w in row.items()} for a, row in self.group_edges.items()},
            "completeness_gap": dict(self.completeness_gap),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "layer") -> "Layer":
        """The layer in ``d``; raises ``NeurFlowError("circuit", ...)`` naming the first value that
        is not as neurflow writes it (a damaged file must not fail later, somewhere else)."""
        d = _obj(d, where)
        nodes = _obj(_get(d, "nodes", where), f"{where}.nodes")
        groups = _list(d.get("groups", []), f"{where}.groups")
        edges = _obj(d.get("group_edges", {}), f"{where}.group_edges")
        gap = _obj(d.get("completeness_gap", {}), f"{where}.completeness_gap")
        layer = cls(
            _str(_get(d, "name", where), f"{where}.name"),
            _str(_get(d, "lower", where), f"{where}.lower"),
            frozen_map(
                (_key(k, f"{where}.nodes"), Node.from_json(_key(k, f"{where}.nodes"), v, f"{where}.nodes[{k}]"))
                for k, v in nodes.items()
            ),
            tuple(Group.from_json(g, f"{where}.groups[{i}]") for i, g in enumerate(groups)),
            frozen_map(
                (_key(a, f"{where}.group_edges"), _weights(row, f"{where}.group_edges[{a}]"))
                for a, row in edges.items()
            ),
            frozen_map((k, _number(v, f"{where}.completeness_gap[{k}]")) for k, v in gap.items()),
            _num(d.get("seconds", 0.0), f"{where}.seconds"),
        )
        layer._check(where)
        return layer

    def _check(self, where: str) -> None:
        """What the commands index by: group ids are positions, members name existing sub-concepts,
        a sub-concept's group and the group edges' upper groups exist."""
        n = len(self.groups)
        for i, g in enumerate(self.groups):
            if g.id != i:
                raise malformed(f"{where}.groups[{i}].id", f"{i} (its position)")
            for m, s in g.members:
                if m not in self.nodes or s >= len(self.nodes[m].sub_concepts):
                    raise malformed(f"{where}.groups[{i}].members", "sub-concepts of the layer's nodes")
        for k, node in self.nodes.items():
            if any(s.group is not None and s.group >= n for s in node.sub_concepts):
                raise malformed(f"{where}.nodes[{k}]", f"sub-concept groups below {n}")
        if any(a >= n for a in self.group_edges):
            raise malformed(f"{where}.group_edges", f"rows of the {n} groups")

    def group_of(self, neuron: int, sub_concept: int) -> int | None:
        return self.nodes[neuron].sub_concepts[sub_concept].group

    def group_exemplars(self, group: Group, limit: int = 12) -> list[int]:
        """A group's display exemplars: its members' display exemplars, members nearest the centre first."""
        seen: dict = {}
        for n, s in group.members:
            for c in self.nodes[n].sub_concepts[s].display_exemplars:
                seen.setdefault(int(c), None)
        return list(seen)[:limit]

    def group_crops(self, group: Group) -> list[int]:
        """Every exemplar crop of the group's member sub-concepts, members nearest the centre first."""
        seen: dict = {}
        for n, s in group.members:
            for c in self.nodes[n].sub_concepts[s].exemplars:
                seen.setdefault(int(c), None)
        return list(seen)


@dataclass(frozen=True)
class Circuit:
    target: int
    layers: tuple  # Layer, ... top down, the class layer first
    input_layer: str  # the lowest layer: its channels are core neurons, never nodes
    trace: tuple = ()  # ((layer name, (group ids...)), ...) top down
    settings: Mapping = field(default_factory=dict)
    meta: Mapping = field(default_factory=dict)  # model, data, class names, timings, versions
    arrays: Mapping = field(default_factory=dict)  # name -> np.ndarray (concept vectors, crop boxes)

    @property
    def target_name(self) -> str | None:
        return self.meta.get("target_name")

    @property
    def config(self):
        """The run's ``NeurFlowConfig`` (settings not recorded take the config's defaults, except
        ``trace_rule``: circuits saved before it existed were traced by the ``sum`` rule)."""
        return NeurFlowConfig.from_dict({"trace_rule": "sum", **dict(self.settings)})

    @property
    def layer_names(self) -> list:
        """The analysed layers top down, then the input layer (the run's ``layers``)."""
        return [l.name for l in self.layers] + [self.input_layer]

    @property
    def provenance(self):
        """The run's typed ``Provenance`` (read from ``meta``)."""
        return Provenance.from_meta(self.meta)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise unknown_name("layer", name, [l.name for l in self.layers])

    def concept_vector(self, layer: str, neuron: int, sub_concept: int) -> np.ndarray:
        keys = self.arrays[f"concept_keys/{layer}"]
        row = np.nonzero((keys[:, 0] == neuron) & (keys[:, 1] == sub_concept))[0][0]
        return self.arrays[f"concept_vectors/{layer}"][row]

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "input_layer": self.input_layer,
            "layers": [l.to_json() for l in self.layers],
            "trace": [{"layer": name, "groups": list(groups)} for name, groups in self.trace],
            "settings": dict(self.settings),
            "meta": _plain(self.meta),
        }

    @classmethod
    def from_json(cls, d: dict, arrays: Mapping | None = None) -> "Circuit":
        """The circuit in ``d`` (``circuit.json``) with its ``arrays``; raises
        ``NeurFlowError("circuit", ...)`` naming the first value that is not as neurflow writes it."""
        d = _obj(d, "circuit")
        layers = _list(_get(d, "layers", "circuit"), "layers")
        if not layers:
            raise malformed("layers", "at least one layer")
        trace = _list(d.get("trace", []), "trace")
        for i, t in enumerate(trace):
            _obj(t, f"trace[{i}]")
        c = cls(
            _int(_get(d, "target", "circuit"), "target"),
            tuple(Layer.from_json(l, f"layers[{i}]") for i, l in enumerate(layers)),
            _str(_get(d, "input_layer", "circuit"), "input_layer"),
            tuple(
                (
                    _str(_get(t, "layer", f"trace[{i}]"), f"trace[{i}].layer"),
                    _ints(_get(t, "groups", f"trace[{i}]"), f"trace[{i}].groups"),
                )
                for i, t in enumerate(trace)
            ),
            frozen_map(_obj(d.get("settings", {}), "settings")),
            frozen_map(_meta(d.get("meta", {}))),
            frozen_map(_arrays(arrays or {})),
        )
        c._check()
        return c

    def _check(self) -> None:
        """What the commands index by: edges to the next layer's groups, the trace's layers and
        groups, crop indices within the crops of ``arrays``, settings a ``NeurFlowConfig`` takes."""
        for i, layer in enumerate(self.layers[:-1]):
            n = len(self.layers[i + 1].groups)
            if any(b >= n for row in layer.group_edges.values() for b in row):
                raise malformed(f"layers[{i}].group_edges", f"edges to the {n} groups of the next layer")
        groups = {l.name: len(l.groups) for l in self.layers}
        for name, ids in self.trace:
            if name not in groups or any(g >= groups[name] for g in ids):
                raise malformed(f"trace {name}", "groups of the circuit's layers")
        box = self.arrays.get("crop_box")
        n_crops = len(box) if box is not None else None
        for i, layer in enumerate(self.layers):
            for k, node in layer.nodes.items():
                crops = list(node.exemplars) + [c for s in node.sub_concepts for c in s.exemplars + s.display_exemplars]
                if n_crops is not None and crops and max(crops) >= n_crops:
                    raise malformed(f"layers[{i}].nodes[{k}]", f"crop indices below the {n_crops} crops of arrays.npz")
        try:
            self.config  # noqa: B018 - the settings must make a config (debug, audit and eval read it)
        except (NeurFlowError, TypeError, ValueError) as exc:
            raise malformed("settings", f"settings neurflow accepts ({exc})") from None


# -- reading circuit.json strictly: a damaged value fails here, naming where it is ------------------
def malformed(where: str, what: str) -> NeurFlowError:
    """The error of a value of a circuit document that is not as neurflow writes it."""
    return NeurFlowError("circuit", what, where, "the circuit document is damaged or not neurflow's")


def _get(d: dict, key: str, where: str):
    if key not in d:
        raise malformed(f"{where}.{key}", "a value (it is missing)")
    return d[key]


def _obj(x, where: str) -> dict:
    if not isinstance(x, dict):
        raise malformed(where, "a JSON object")
    return x


def _list(x, where: str) -> list:
    if not isinstance(x, list):
        raise malformed(where, "a JSON list")
    return x


def _str(x, where: str) -> str:
    if not isinstance(x, str):
        raise malformed(where, "a string")
    return x


def _int(x, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise malformed(where, "a non-negative integer")
    return x


def _ints(x, where: str) -> tuple:
    return tuple(_int(v, where) for v in _list(x, where))


def _number(x, where: str):
    """``x``, an int or a float, as it is."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise malformed(where, "a number")
    return x


def _num(x, where: str) -> float:
    return float(_number(x, where))


def _key(k: str, where: str) -> int:
    if not k.isdigit():
        raise malformed(where, f"neuron or group indices as keys (not {k[:20]!r})")
    return int(k)


def _weights(x, where: str) -> Mapping:
    return frozen_map((_key(k, where), _num(v, f"{where}[{k}]")) for k, v in _obj(x, where).items())


def _label(x, where: str) -> dict:
    """A group's label: ``text``, ``confidence`` a number or None, ``check`` with numbers."""
    x = _obj(x, where)
    if x.get("confidence") is not None:
        _num(x["confidence"], f"{where}.confidence")
    check = x.get("check")
    if check is not None:
        for k in ("precision", "recall", "n_true", "n_random"):
            if k in _obj(check, f"{where}.check"):
                _num(check[k], f"{where}.check.{k}")
    return x


def _relation(x, where: str) -> dict:
    x = _obj(x, where)
    _ints(x.get("lower", []), f"{where}.lower")
    return x


# meta entries the commands read, and the JSON type each must have when present
_META_TYPES = {
    "class_names": list,
    "files": list,
    "timings_s": dict,
    "crop_sizes": dict,
    "target_name": str,
    "run_hash": str,
    "model_hash": str,
    "class_images_hash": str,
    "n_crops": int,
    "image_size": int,
}


def _meta(x) -> dict:
    x = _obj(x, "meta")
    for k, kind in _META_TYPES.items():
        if x.get(k) is not None and (not isinstance(x[k], kind) or isinstance(x[k], bool)):
            raise malformed(f"meta.{k}", f"a JSON {kind.__name__}")
    return x


def _arrays(arrays: Mapping) -> Mapping:
    """The arrays the commands index: crop boxes [P, 4] and crop images [P] of non-negative
    integers, concept keys [m, 2] with as many concept vectors."""
    box, image = arrays.get("crop_box"), arrays.get("crop_image")
    for name, a, ndim in (("crop_box", box, 2), ("crop_image", image, 1)):
        if a is not None and (a.ndim != ndim or a.dtype.kind not in "iu" or (a.size and a.min() < 0)):
            raise malformed(f"arrays.npz {name}", f"a {ndim}-D array of non-negative integers")
    if box is not None and (box.shape[1] != 4 or (image is not None and len(image) != len(box))):
        raise malformed("arrays.npz crop_box", "4 columns, one row per crop_image entry")
    for name, keys in arrays.items():
        if name.startswith("concept_keys/"):
            vectors = arrays.get("concept_vectors/" + name.split("/", 1)[1])
            if keys.ndim != 2 or keys.shape[1] != 2 or vectors is None or len(vectors) != len(keys):
                raise malformed(f"arrays.npz {name}", "[m, 2] keys with as many concept vectors")
    return arrays


def _plain(x):
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# -- warnings read from a layer's completeness facts -------------------------------------------
# one wording for the run, ``neurflow show`` and the report: a relative completeness gap above
# ``COMPLETENESS_WARN_RELATIVE`` (integrated gradients missed part of h(A) - h(0), typically behind a
# normalisation layer; see docs/method.md) and nodes whose attributions are all zero (their core sets
# are then only the tie order)
def gap_warnings(facts: Mapping, threshold: float = COMPLETENESS_WARN_RELATIVE) -> list[str]:
    """The warnings for one layer's ``completeness_gap`` facts (empty when there is nothing to say)."""
    out = []
    rel = facts.get("relative")
    if isinstance(rel, (int, float)) and rel > threshold:
        out.append(
            f"relative completeness gap {rel:.3g} is above {threshold:g}: the attributions miss part of "
            "h(A) - h(0), so the core sets may be wrong (a LayerNorm/GroupNorm between the two layers "
            "differentiated through under --norm-rule plain, or too few --ig-steps; see docs/method.md)"
        )
    zero = facts.get("zero_attribution_nodes")
    if isinstance(zero, (int, float)) and zero > 0:
        out.append(
            f"{int(zero)} node(s) with all-zero attributions: their core sets are only the tie order "
            "(e.g. a zero-initialised head with untrained weights)"
        )
    return out
