"""The option dataclasses and names the command line builds its flags from, kept free of torch.

``neurflow --help`` (and every ``neurflow COMMAND --help``) builds the whole parser, so whatever
the parser reads must import in a blink: this module, ``config.py``, ``demo.py``, the scheme
registries (``schemes.py``) and the labeler registry (``labels/__init__.py``) import neither torch
nor scipy nor scikit-learn (``tests/test_start.py`` checks it).  The classes are re-exported where
they are used: ``run.Reopen`` and ``evaluate.Options``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import NeurFlowError

# presets of image folders (``datasets.load_data``)
TRANSFORMS = ("imagenet", "none")

# the experiments of ``neurflow eval``, in the order ``all`` runs them (the functions: ``evaluate.EXPERIMENTS``)
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


@dataclass(frozen=True)
class Reopen:
    """How to reopen a run's model and data (the flags of debug, audit and eval)."""

    model: str | None = _opt("override the run's recorded model spec", default=None)
    weights: str | None = _opt("override the run's weights file (loaded with weights_only=True)", default=None)
    trust_checkpoint: bool = _opt("allow a checkpoint that needs pickle", default=False)
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
