"""The one typed configuration of a NeurFlow run.  Defaults live here and only here;
the CLI maps its flags onto these fields one to one."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .errors import NeurFlowError

EDGE_NORMS = ("l1", "reference")
GROUP_EDGE_RULES = ("published", "once")
SELECTIONS = ("predicted", "labelled")


@dataclass(frozen=True)
class NeurFlowConfig:
    tau: int = 16                      # core neurons per node (the cap when adaptive_eps is set)
    top_k: int = 50                    # exemplar crops per node
    ig_steps: int = 50                 # Gauss-Legendre nodes for integrated gradients
    granularities: tuple = (1.0, 0.5, 0.25)
    stride_ratio: float = 0.5
    adaptive_eps: float | None = None  # the authors' "acceptable error range"; None = fixed tau
    edge_norm: str = "l1"              # "l1" or "reference" (the published in-place rule)
    max_sub_concepts: int = 5
    monosemantic_threshold: float | None = None  # allow one sub-concept below this silhouette
    max_groups: int = 100
    n_groups: int | None = None        # fixed layer-group count (None: silhouette argmax)
    group_edge_rule: str = "published"  # "published": once per sub-concept; "once": once per neuron
    top_n: int = 3                     # groups traced per layer
    selection: str = "predicted"       # class images: "predicted" or "labelled" as the target
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "granularities", tuple(float(g) for g in self.granularities))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str, given, hint: str = ""):
            if not ok:
                raise NeurFlowError(name, expected, given, hint)

        need(isinstance(self.tau, int) and self.tau >= 1, "tau", "an integer >= 1", self.tau)
        need(isinstance(self.top_k, int) and self.top_k >= 1, "top_k", "an integer >= 1", self.top_k)
        need(isinstance(self.ig_steps, int) and self.ig_steps >= 1, "ig_steps", "an integer >= 1", self.ig_steps)
        need(len(self.granularities) > 0 and all(0 < g <= 1 for g in self.granularities),
             "granularities", "fractions in (0, 1]", self.granularities, "e.g. 1,0.5,0.25")
        need(0 < self.stride_ratio <= 1, "stride_ratio", "a number in (0, 1]", self.stride_ratio)
        need(self.adaptive_eps is None or self.adaptive_eps >= 0, "adaptive_eps", "a number >= 0", self.adaptive_eps)
        need(self.edge_norm in EDGE_NORMS, "edge_norm", " or ".join(EDGE_NORMS), self.edge_norm)
        need(isinstance(self.max_sub_concepts, int) and self.max_sub_concepts >= 1,
             "max_sub_concepts", "an integer >= 1", self.max_sub_concepts)
        need(self.max_groups >= 1, "max_groups", "an integer >= 1", self.max_groups)
        need(self.n_groups is None or self.n_groups >= 1, "n_groups", "an integer >= 1", self.n_groups)
        need(self.group_edge_rule in GROUP_EDGE_RULES, "group_edge_rule", " or ".join(GROUP_EDGE_RULES),
             self.group_edge_rule)
        need(self.top_n >= 1, "top_n", "an integer >= 1", self.top_n)
        need(self.selection in SELECTIONS, "selection", " or ".join(SELECTIONS), self.selection)
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["granularities"] = list(self.granularities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NeurFlowConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "granularities" else v) for k, v in d.items() if k in names})

    def method_dict(self) -> dict:
        """Settings that change the result (device and batch size do not)."""
        d = self.to_dict()
        d.pop("device")
        d.pop("batch_size")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
