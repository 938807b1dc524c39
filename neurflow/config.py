"""The one typed configuration of a NeurFlow run.  Defaults live here and only here;
the CLI maps its flags onto these fields one to one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import NeurFlowError

EDGE_NORMS = ("l1", "reference")
GROUP_EDGE_RULES = ("published", "once")
TRACE_RULES = ("published", "sum")
SELECTIONS = ("predicted", "labelled")
ENGINES = ("auto", "dense")
CHANNEL_AXES = ("auto", "1", "-1")
NORM_RULES = ("frozen", "plain")
PRECISIONS = ("fp32", "tf32", "bf16")
# the Gauss-Legendre orders --ig-steps auto tries, smallest first
DEFAULT_IG_STEPS = 50  # the published number of IG steps
IG_ORDERS = (4, 8, 12, 16, 24, 32, 50, 64, 100)
AUTO_SAMPLE_PAIRS = 64  # the (node, crop) pairs per layer on which --ig-steps auto measures the gap
# the adaptive rule reads each lower layer's full output on the whole pool: the activations pass
# keeps those maps (on the CPU) when together they fit this many bytes, else each layer recomputes them
KEEP_MAPS_BYTES = 1536 * 2**20
# nodes per layer whose core sets a faster --precision recomputes in fp32 to report the agreement
PRECISION_CHECK_NODES = 8
# a layer whose relative completeness gap (mean |sum of attributions - (h(A) - h(0))| over mean
# |h(A) - h(0)|) exceeds this is warned about in the run, `neurflow show` and the report
COMPLETENESS_WARN_RELATIVE = 0.05


# every seed of every command lies in [0, SEED_LIMIT): numpy's generators take no other
SEED_LIMIT = 2**32


def check_numbers(options) -> None:
    """The checks every setting and option dataclass shares (``NeurFlowConfig``, ``options.py``): a
    number in a field (alone or in a tuple) is finite (nan and inf would reach the JSON of a run as
    ``NaN``/``Infinity``, which no JSON reader takes), and a field named ``seed`` is an integer in
    [0, 2**32).  Raises ``NeurFlowError`` naming the field."""
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        values = v if isinstance(v, tuple) else (v,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise NeurFlowError(f.name, "a finite number", v, "nan and inf are not settings")
        if f.name == "seed" and not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < SEED_LIMIT):
            raise NeurFlowError(f.name, f"an integer in [0, {SEED_LIMIT}) (0 <= seed < 2**32)", v)


def steps_or_auto(text: str):
    """``--ig-steps``: an integer or ``auto``."""
    return "auto" if str(text).strip().lower() == "auto" else int(text)


def count_or_counts(text: str):
    """``--n-groups``: one integer (every layer) or a comma list of integers, one per layer."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        counts = tuple(int(t) for t in parts)
    except ValueError:
        counts = ()
    if not counts:
        raise argparse.ArgumentTypeError(f"expected an integer or comma-separated integers (e.g. 10,5,3), got {text!r}")
    return counts[0] if len(counts) == 1 and "," not in str(text) else counts


def _setting(default, help: str, choices: tuple | None = None, parse=None):
    """A setting: its default and its help text live here, the CLI flag is generated from both
    (``parse``: how the flag's text becomes the value, when the type alone does not say)."""
    meta = {"help": help, **({"choices": choices} if choices else {}), **({"parse": parse} if parse else {})}
    return field(default=default, metadata=meta)


def _count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def groups_per_layer(n_groups: int | tuple | None, count: int) -> list:
    """``n_groups`` spread over the ``count`` analysed layers below the class layer, top down;
    a tuple must hold exactly one count per layer."""
    if not isinstance(n_groups, tuple):
        return [n_groups] * count
    if len(n_groups) != count:
        expected = (
            f"one number, or {count} comma-separated numbers (one per analysed layer below the class layer)"
            if count > 1
            else f"one number ({count} analysed layer below the class layer)"
        )
        raise NeurFlowError("n_groups", expected, ",".join(map(str, n_groups)))
    return list(n_groups)


@dataclass(frozen=True)
class NeurFlowConfig:
    tau: int = _setting(16, "core neurons per node (the cap under --adaptive-eps)")
    top_k: int = _setting(50, "exemplar crops per node")
    ig_steps: int | str = _setting(
        DEFAULT_IG_STEPS,
        "Gauss-Legendre steps of integrated gradients, or auto: per layer the smallest order (of "
        + ", ".join(map(str, IG_ORDERS))
        + ") whose relative completeness gap is below --ig-tol, on a sample of the layer's (node, crop) pairs",
        parse=steps_or_auto,
    )
    ig_tol: float = _setting(1e-3, "the relative completeness gap --ig-steps auto accepts")
    precision: str = _setting(
        "fp32",
        "arithmetic of the attribution: fp32 (exact), tf32 (TensorFloat-32 matmuls and convolutions on GPUs) or "
        "bf16 (bfloat16 autocast); a faster mode records its core-set agreement with fp32 in the run's facts",
        PRECISIONS,
    )
    granularities: tuple = _setting((1.0, 0.5, 0.25), "crop sizes as fractions, e.g. 1,0.5,0.25")
    stride_ratio: float = _setting(0.5, "crop stride as a fraction of the crop side")
    adaptive_eps: float | None = _setting(None, "adaptive tau: the acceptable error range eps (None: fixed tau)")
    edge_norm: str = _setting("l1", "edge weight normalisation (reference = the published in-place rule)", EDGE_NORMS)
    max_sub_concepts: int = _setting(5, "most sub-concepts per node")
    monosemantic_threshold: float | None = _setting(None, "allow one sub-concept when no split reaches this silhouette")
    max_groups: int = _setting(100, "most groups per layer (silhouette search)")
    n_groups: int | tuple | None = _setting(
        None,
        "fixed number of groups per layer: one number, or a comma list with one per analysed layer below the "
        "class layer, top down, e.g. 10,5,3 (None: silhouette argmax)",
        parse=count_or_counts,
    )
    group_edge_rule: str = _setting(
        "published",
        "published: a lower weight counts once per sub-concept in the group; once: once per neuron",
        GROUP_EDGE_RULES,
    )
    top_n: int = _setting(3, "groups traced per layer (per kept upper group under --trace-rule published)")
    trace_rule: str = _setting(
        "published",
        "published: each kept upper group keeps its own top-n lower groups, the trace is their union; "
        "sum: the top-n lower groups by weight summed over the kept upper groups",
        TRACE_RULES,
    )
    selection: str = _setting("predicted", "class images: predicted or labelled as the target", SELECTIONS)
    engine: str = _setting(
        "auto",
        "IG engine: auto = channel-sparse on the CPU where the segment allows it, else dense (dense on a GPU, where "
        "it is faster); dense = always dense",
        ENGINES,
    )
    channel_axis: str = _setting(
        "auto",
        "where the channels of a 4-D layer output lie: auto = read off each layer's module (Conv2d: 1, "
        "LayerNorm/Linear: -1), refused where it does not say; 1 ([B, C, H, W]) or -1 ([B, H, W, C]) for those",
        CHANNEL_AXES,
    )
    norm_rule: str = _setting(
        "frozen",
        "LayerNorm, GroupNorm and RMSNorm between two analysed layers: frozen = their scale held at its value on the "
        "crop, like the other held inputs, so integrated gradients stay complete; plain = differentiated through "
        "(scale invariance then hides most of h(A) - h(0) from IG; docs/method.md)",
        NORM_RULES,
    )
    batch_size: int = _setting(64, "batch size (bounds peak memory)")
    threads: int | None = _setting(
        None, "CPU threads for torch (default: the CPUs this process may run on, its affinity)"
    )
    device: str = _setting("cpu", "cpu or cuda")
    data_workers: int | None = _setting(
        None,
        "processes decoding image files in the prediction pass (default: the CPUs less one, at most 8; "
        "0: in this process)",
    )
    cache_dir: str | None = _setting(
        None,
        "where the prediction pass over the data is cached and reused (default: $NEURFLOW_CACHE, else "
        "~/.cache/neurflow)",
    )
    seed: int = _setting(0, "random seed")

    def __post_init__(self):
        g = self.granularities
        if not (isinstance(g, tuple) and all(type(v) is float for v in g)):  # kept as given when it is one
            object.__setattr__(self, "granularities", tuple(float(v) for v in g))
        if isinstance(self.n_groups, list):
            object.__setattr__(self, "n_groups", tuple(self.n_groups))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str, given, hint: str = ""):
            if not ok:
                raise NeurFlowError(name, expected, given, hint)

        check_numbers(self)
        need(isinstance(self.tau, int) and self.tau >= 1, "tau", "an integer >= 1", self.tau)
        need(isinstance(self.top_k, int) and self.top_k >= 1, "top_k", "an integer >= 1", self.top_k)
        need(
            self.ig_steps == "auto" or (isinstance(self.ig_steps, int) and self.ig_steps >= 1),
            "ig_steps",
            "an integer >= 1 or auto",
            self.ig_steps,
        )
        need(isinstance(self.ig_tol, (int, float)) and 0 < self.ig_tol < 1, "ig_tol", "a number in (0, 1)", self.ig_tol)
        need(self.precision in PRECISIONS, "precision", " or ".join(PRECISIONS), self.precision)
        need(
            len(self.granularities) > 0 and all(0 < g <= 1 for g in self.granularities),
            "granularities",
            "fractions in (0, 1]",
            self.granularities,
            "e.g. 1,0.5,0.25",
        )
        need(0 < self.stride_ratio <= 1, "stride_ratio", "a number in (0, 1]", self.stride_ratio)
        need(self.adaptive_eps is None or self.adaptive_eps >= 0, "adaptive_eps", "a number >= 0", self.adaptive_eps)
        need(self.edge_norm in EDGE_NORMS, "edge_norm", " or ".join(EDGE_NORMS), self.edge_norm)
        need(
            isinstance(self.max_sub_concepts, int) and self.max_sub_concepts >= 1,
            "max_sub_concepts",
            "an integer >= 1",
            self.max_sub_concepts,
        )
        need(_count(self.max_groups), "max_groups", "an integer >= 1", self.max_groups)
        need(
            self.n_groups is None
            or (_count(self.n_groups))
            or (isinstance(self.n_groups, tuple) and len(self.n_groups) > 0 and all(map(_count, self.n_groups))),
            "n_groups",
            "an integer >= 1 or a tuple of them (one per analysed layer below the class layer)",
            self.n_groups,
            "e.g. 10,5,3",
        )
        need(
            self.group_edge_rule in GROUP_EDGE_RULES,
            "group_edge_rule",
            " or ".join(GROUP_EDGE_RULES),
            self.group_edge_rule,
        )
        need(_count(self.top_n), "top_n", "an integer >= 1", self.top_n)
        need(self.trace_rule in TRACE_RULES, "trace_rule", " or ".join(TRACE_RULES), self.trace_rule)
        need(self.selection in SELECTIONS, "selection", " or ".join(SELECTIONS), self.selection)
        need(self.engine in ENGINES, "engine", " or ".join(ENGINES), self.engine)
        need(self.channel_axis in CHANNEL_AXES, "channel_axis", " or ".join(CHANNEL_AXES), self.channel_axis)
        need(self.norm_rule in NORM_RULES, "norm_rule", " or ".join(NORM_RULES), self.norm_rule)
        need(
            self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
            "threads",
            "an integer >= 1",
            self.threads,
        )
        need(
            isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size
        )
        need(
            self.data_workers is None or (type(self.data_workers) is int and self.data_workers >= 0),
            "data_workers",
            "an integer >= 0 (0: decode in this process)",
            self.data_workers,
        )
        need(self.cache_dir is None or isinstance(self.cache_dir, str), "cache_dir", "a directory path", self.cache_dir)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["granularities"] = list(self.granularities)
        if isinstance(self.n_groups, tuple):
            d["n_groups"] = list(self.n_groups)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "NeurFlowConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {
            k: (tuple(v) if k in ("granularities", "n_groups") and isinstance(v, (list, tuple)) else v)
            for k, v in d.items()
            if k in names
        }
        return cls(**kw)

    def method_dict(self) -> dict:
        """Settings that change the result (device, batch size, engine, threads, the decoding
        workers and the cache directory do not)."""
        d = self.to_dict()
        for key in ("device", "batch_size", "engine", "threads", "data_workers", "cache_dir"):
            d.pop(key)
        if self.ig_steps != "auto":  # only read by --ig-steps auto
            d.pop("ig_tol")
        # at their defaults, settings added later leave a run's identity as it was before them
        # (channel_axis, precision: the exact default; norm_rule: a model without such normalisations
        # is unaffected)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in ("channel_axis", "norm_rule", "precision"):
            if getattr(self, key) == defaults[key]:
                d.pop(key)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


DEFAULTS = NeurFlowConfig()  # the defaults, for the functions that take one of the settings as a parameter
