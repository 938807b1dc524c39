"""The option dataclasses and names the command line builds its flags from, kept free of torch.

``neurflow --help`` (and every ``neurflow COMMAND --help``) builds the whole parser, so whatever
the parser reads must import in a blink: this module, ``config.py``, ``demo.py``, the scheme
registries (``sources/schemes.py``) and the labeler registry (``analysis/labels/__init__.py``) import
neither torch nor scipy nor scikit-learn (``tests/test_start.py`` checks it).  ``Reopen`` holds how
debug, audit and eval reopen a run's model and data, ``EvalOptions`` the experiments' options
(``analysis.evaluate`` calls it ``Options``).  ``DebugOptions``, ``AuditOptions``,
``LabelOptions`` and ``AtlasOptions`` hold the defaults of ``debug_image``, ``audit``,
``label_run`` and ``run_atlas`` (the functions read them from here) and the help of their flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import check_numbers
from .errors import NeurFlowError

# presets of image folders (``datasets.load_data``)
TRANSFORMS = ("imagenet", "none")

# how ``neurflow debug`` ranks and thresholds the groups (``debug.score_groups``)
SCORES = ("published", "clipped")
# which groups ``neurflow label`` labels (None: the labeler's ``default_groups``)
LABEL_GROUPS = ("traced", "all")

# the experiments of ``neurflow eval``, in the order ``all`` runs them: the one list of their names
# (``analysis.evaluate.EXPERIMENTS`` and ``PAPER_IDS`` follow it, and refuse to import when they differ)
EXPERIMENT_NAMES = (
    "fidelity",
    "mct",
    "edge-correlation",
    "methods",
    "aggregation",
    "optimality",
    "k",
    "crop-sizes",
    "overlap",
    "weight-norm",
)


def _opt(help: str, **kw):  # noqa: A002
    return field(metadata={"help": help}, **kw)


def _option(default, help: str, choices: tuple | None = None, parse=None, metavar: str | None = None):  # noqa: A002
    """An option: its default and its help text live here, the CLI flag is generated from both
    (``parse``: how the flag's text becomes the value, when the type alone does not say;
    ``metavar``: the flag's value as the help shows it).  A help text that says its default
    itself (``default`` in it, ``%(default)s`` where it names the value) gets no ``(default: ...)``."""
    flag = {"choices": choices, "parse": parse, "metavar": metavar}
    return field(default=default, metadata={"help": help, **{k: v for k, v in flag.items() if v is not None}})


# a model spec read from a run directory is data: a factory (file.py:fn, module:fn) in it runs only with this
TRUST_MODEL_SPEC_HELP = (
    "run the model factory (file.py:fn, module:fn) that the run directory records, which executes code the "
    "directory names (not needed for a run you made here, nor for schemes such as zoo: and torchvision:)"
)


@dataclass(frozen=True)
class Reopen:
    """How to reopen a run's model and data (the flags of debug, audit and eval)."""

    model: str | None = _opt("override the run's recorded model spec", default=None)
    weights: str | None = _opt("override the run's weights file (loaded with weights_only=True)", default=None)
    trust_checkpoint: bool = _opt("allow a checkpoint that needs pickle", default=False)
    trust_model_spec: bool = _opt(TRUST_MODEL_SPEC_HELP, default=False)
    data: str | None = _opt("override the run's data", default=None)
    transform: str | None = field(
        default=None, metadata={"help": "override the run's transform", "choices": TRANSFORMS}
    )
    batch_size: int | None = _opt("batch size (default: the run's config)", default=None)
    device: str | None = _opt("cpu or cuda (default: the run's config)", default=None)
    quiet: bool = _opt("no progress bars", default=False)


@dataclass(frozen=True)
class EvalOptions:
    """The experiments' own options (the CLI makes one flag of each; batch size, device and
    progress bars come from the reopened run)."""

    draws: int = _opt("random baselines per setting, E1", default=10)
    subsets: int = _opt("random channel subsets per size, E3-E5", default=20)
    sizes: tuple = _opt("subset sizes, E3-E5", default=(1, 5, 10, 20, 50))
    random_sets: int = _opt("random sets against the core set, E6", default=100)
    nodes: int = _opt("nodes per layer below the class layer, E3/E5/E6/E11", default=1)
    max_crops: int = _opt("crops drawn from the pool for top-k overlaps, 0 = all", default=1000)
    max_images: int = _opt("class images for NeuronMCT's IG, E2/E10, 0 = all", default=256)
    ks: tuple = _opt("values of k, E8", default=(10, 30, 50, 70, 90, 110, 130, 150, 170, 190))
    seed: int = _opt("seed of every random draw", default=0)

    def __post_init__(self):
        check_numbers(self)
        for name in ("draws", "subsets", "random_sets", "nodes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise NeurFlowError(name, "an integer >= 1", getattr(self, name))
        for name in ("sizes", "ks"):
            v = getattr(self, name)
            if not v or not all(isinstance(x, int) and x >= 1 for x in v):
                raise NeurFlowError(name, "integers >= 1", v)
        for name in ("max_crops", "max_images"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise NeurFlowError(name, "an integer >= 0 (0: all)", getattr(self, name))

    def key(self, *names) -> dict:
        d = self.__dict__
        return {n: (list(d[n]) if isinstance(d[n], tuple) else d[n]) for n in names}


@dataclass(frozen=True)
class DebugOptions:
    """``debug_image``'s options: the flags of ``neurflow debug`` besides ``--image`` (``json`` is the
    command's own: how it prints the result)."""

    layer: str | None = _option(None, "layer of the circuit to score (default: the highest below the class layer)")
    threshold: float = _option(0.8, "strong groups and triggering crops")
    score: str = _option(
        "published", "rank and threshold by the published (unbounded) or the clipped score", choices=SCORES
    )
    representatives: int | str | None = _option(
        5,  # the published num_top_vecs
        "score each group on its N members nearest the group centre, or all (default: %(default)s, as published)",
        parse=str,  # a count or "all", read by ``debug.representatives_count``
        metavar="N|all",
    )
    json: bool = _option(False, "print the JSON result instead of the text summary")

    def __post_init__(self):
        check_numbers(self)  # finite numbers, the seed's range


@dataclass(frozen=True)
class AuditOptions:
    """``audit``'s options: the flags of ``neurflow audit`` (``layers`` is comma-separated there, the
    command splits it; ``json`` is the command's own)."""

    max_images: int = _option(256, "false positives and true positives each sampled to at most this many")
    layers: str | None = _option(
        None, "comma-separated layers of the circuit to audit (default: all below the class layer)"
    )
    seed: int = _option(0, "seed of the sampling")
    max_candidates: int = _option(
        256,
        "per layer, at most this many sub-clusters of the groups' Ward tree (sub-groups down to single neurons) "
        "audited besides the groups, biggest first",
    )
    json: bool = _option(False, "print the JSON result instead of the ranked table")

    def __post_init__(self):
        check_numbers(self)  # finite numbers, the seed's range


@dataclass(frozen=True)
class LabelOptions:
    """``label_run``'s options: the flags of ``neurflow label`` besides ``--labeler`` and the
    labelers' own (those come from the labeler registry).  ``no_check`` / ``no_relations`` are
    ``label_run``'s ``check`` / ``relations`` negated; ``layers`` is comma-separated, ``json`` and
    ``quiet`` are the command's own (the library is quiet unless told otherwise)."""

    groups: str | None = _option(
        None, "label the traced groups or every group (default: traced for vlm, all otherwise)", choices=LABEL_GROUPS
    )
    layers: str | None = _option(None, "comma-separated layers to label (default: every layer below the class layer)")
    no_check: bool = _option(False, "skip the caption check")
    no_relations: bool = _option(False, "skip the relation captions (vlm)")
    seed: int = _option(0, "seed of the check's random crops")
    trust_model_spec: bool = _option(
        False, TRUST_MODEL_SPEC_HELP + "; label reopens the model only to send crops above 64 px at full size"
    )
    json: bool = _option(False, "print the labels as JSON")
    quiet: bool = _option(False, "no progress bars")

    def __post_init__(self):
        check_numbers(self)  # finite numbers, the seed's range


@dataclass(frozen=True)
class AtlasOptions:
    """``run_atlas``'s options and the atlas's own flags of ``neurflow atlas`` (besides the model and
    data specs and the method settings, ``NeurFlowConfig``'s): ``targets`` and ``layers`` are
    comma-separated there (``plan.parse_targets``), ``threads_per_worker`` / ``gpus_per_worker`` are
    ``run_atlas``'s ``threads`` / ``gpus``."""

    targets: str = _option("all", "all (default), or comma-separated class indices or names, e.g. 3,5,Bag")
    layers: str | None = _option(
        None, "comma-separated layer names, top down: class layer first, lowest input layer last"
    )
    out: str | None = _option(None, "default: runs/atlas-fashion-cnn for the demo", metavar="DIR")
    overwrite: bool = _option(False, "replace different runs in the class directories")
    quiet: bool = _option(False, "no progress bar")
    workers: int | None = _option(
        None,
        "Ray workers, each computing one class at a time (default: the CPUs over --threads-per-worker); "
        "0: serially in this process, without Ray",
    )
    threads_per_worker: int | None = _option(None, "torch threads of each worker (default: 1; serial: all)")
    gpus_per_worker: float = _option(0.0, "GPUs each worker reserves")
    ray_address: str | None = _option(
        None, "join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)"
    )

    def __post_init__(self):
        check_numbers(self)  # finite numbers, the seed's range
