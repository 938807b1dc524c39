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
from .errors import unknown_name
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
    def from_json(cls, d: dict) -> "SubConcept":
        return cls(
            d["id"],
            tuple(d["exemplars"]),
            tuple(d["display_exemplars"]),
            float(d["activation"]),
            frozen_map((int(k), float(v)) for k, v in d["weights"].items()),
            frozen_map((int(k), float(v)) for k, v in d.get("raw_weights", {}).items()),
            d.get("group"),
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
    def from_json(cls, index: int, d: dict) -> "Node":
        return cls(
            index,
            tuple(d["core"]),
            tuple(SubConcept.from_json(s) for s in d["sub_concepts"]),
            tuple(d["exemplars"]),
            tuple(d.get("importance", ())),
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
    def from_json(cls, d: dict) -> "Group":
        label = d.get("label")
        if isinstance(label, str):  # a bare caption
            label = {"text": label}
        return cls(
            d["id"],
            tuple(tuple(m) for m in d["members"]),
            tuple(d["neurons"]),
            frozen_map(label) if label is not None else None,
            frozen_map(d["relation"]) if d.get("relation") is not None else None,
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
    def from_json(cls, d: dict) -> "Layer":
        return cls(
            d["name"],
            d["lower"],
            frozen_map((int(k), Node.from_json(int(k), v)) for k, v in d["nodes"].items()),
            tuple(Group.from_json(g) for g in d.get("groups", [])),
            frozen_map(
                (int(a), frozen_map((int(b), float(w)) for b, w in row.items()))
                for a, row in d.get("group_edges", {}).items()
            ),
            frozen_map(d.get("completeness_gap", {})),
            float(d.get("seconds", 0.0)),
        )

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
        return cls(
            int(d["target"]),
            tuple(Layer.from_json(l) for l in d["layers"]),
            d["input_layer"],
            tuple((t["layer"], tuple(t["groups"])) for t in d.get("trace", [])),
            frozen_map(d.get("settings", {})),
            frozen_map(d.get("meta", {})),
            frozen_map(arrays or {}),
        )


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
