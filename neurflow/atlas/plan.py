"""What an atlas runs: the model, the data, the layers, the settings, the target classes and
their directories (``Plan``), and ``prepare``: the model and data loaded once, the one
prediction pass shared by every class, and every check that can refuse the command (unknown
layers or targets, a class without images) before anything is written."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .._state import running
from ..config import NeurFlowConfig
from ..demo import DEMOS
from ..errors import NeurFlowError
from ..method import resolve_target
from ..method.predictions import predict as cached_predict
from ..options import AtlasOptions
from ..provenance import Provenance
from ..slicing import LayerGraph
from ..sources.inputs import load_inputs, run_provenance
from ..sources.stream import default_workers
from ..store import model_hash
from .layout import AtlasDir


@dataclass(frozen=True)
class Plan:
    """One atlas: ``targets`` are as given (``all``, or a list of indices and class names)."""

    model: str
    data: str
    layers: tuple | None
    config: NeurFlowConfig
    targets: str | tuple = AtlasOptions().targets
    out: str = "runs/atlas"
    weights: str | None = None
    trust_checkpoint: bool = False
    transform: str | None = None
    demo: str | None = None  # the `neurflow demo` whose settings these are (its provenance is recorded)
    overwrite: bool = False

    @property
    def root(self) -> Path:
        return Path(self.out)

    @property
    def dir(self) -> AtlasDir:
        return AtlasDir(self.out)

    def class_dir(self, index: int, name: str | None) -> Path:
        return self.dir.class_dir(index, name)


def demo_plan(name: str = "fashion-cnn", out: str | None = None, **runtime) -> Plan:
    """The plan of ``neurflow atlas`` without arguments: the demo's model, data, layers and
    settings, every class (each class's circuit is ``neurflow demo --target CLASS``'s)."""
    demo = DEMOS[name]
    cfg = NeurFlowConfig(**{**demo.settings, **{k: v for k, v in runtime.items() if v is not None}})
    return Plan(demo.model, demo.data, tuple(demo.layers), cfg, "all", out or f"runs/atlas-{name}", demo=name)


def parse_targets(text) -> str | tuple:
    """``all`` or a comma list of class indices and names (as given, resolved by ``prepare``)."""
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    else:
        if str(text).strip().lower() == "all":
            return "all"
        items = [t.strip() for t in str(text).split(",")]
    items = [t for t in items if t]
    if not items:
        raise NeurFlowError("targets", "all, or comma-separated class indices or names", text)
    return tuple(items)


@dataclass
class Prepared:
    """The plan's loaded model and data, the shared logits and the resolved classes."""

    plan: Plan
    loaded: object  # models.LoadedModel
    data: object  # datasets.Dataset
    predictions: object  # store.predictions.Predictions of every image
    classes: list  # [(index, name)], in the plan's order
    counts: dict  # index -> number of class images

    @property
    def class_names(self) -> list | None:
        names = self.loaded.class_names or self.data.class_names  # type: ignore[attr-defined]
        return list(names) if names else None

    def provenance(self):
        return provenance(self.plan, self.loaded, self.data)


def provenance(plan: Plan, loaded, data):
    """What each class records about its model and data: exactly what ``neurflow demo`` (demo
    plans) or ``neurflow run`` records, so that a class's circuit equals theirs."""
    files = tuple(data.files) if data.files else None
    if plan.demo:
        demo = DEMOS[plan.demo]
        return Provenance(
            model_spec=demo.model,
            data_spec=demo.data,
            transform=data.transform,
            demo=plan.demo,
            note=demo.note,
            files=files,
        )
    return run_provenance(loaded, plan.weights, plan.data, data)


def load_plan_inputs(plan: Plan):
    """(LoadedModel, Dataset, layers) of the plan: what every worker loads once."""
    return load_inputs(plan.model, plan.weights, plan.trust_checkpoint, plan.config.seed, plan.layers, plan.data,
                       plan.transform)  # fmt: skip


def predict(model, images, layers, cfg: NeurFlowConfig, quiet: bool = True):
    """The model's ``Predictions`` on ``images`` exactly as ``NeurFlow.fit`` computes them (the
    traced graph, the run's batch size, device and threads; a folder's from the prediction cache
    when it holds them): the prediction pass the classes share."""
    with running(model, cfg.device, cfg.threads, cfg.seed):
        graph = LayerGraph(model, layers, (), cfg.channel_axis)
        workers = default_workers() if cfg.data_workers is None else cfg.data_workers
        return cached_predict(graph.full(), images, model_hash(model), graph.code, batch_size=cfg.batch_size,
                              device=cfg.device, workers=workers, cache_dir=cfg.cache_dir, quiet=quiet)  # fmt: skip


def prepare(plan: Plan) -> Prepared:
    """Load, predict once, resolve the targets and count each class's images; a ``NeurFlowError``
    for an unknown layer or target or a class without images (nothing is written here)."""
    loaded, data, layers = load_plan_inputs(plan)
    plan = dataclasses.replace(plan, layers=tuple(layers))
    pred = predict(loaded.model, data.images, layers, plan.config)
    n_classes = pred.n_classes
    names = loaded.class_names or data.class_names
    if plan.targets == "all":
        indices = list(range(n_classes))
    else:
        try:
            indices = list(dict.fromkeys(resolve_target(t, n_classes, names) for t in plan.targets))
        except NeurFlowError as exc:  # named as this command's parameter
            raise NeurFlowError("targets", exc.expected, exc.given, exc.hint) from None
    if plan.config.selection == "labelled":
        if data.labels is None:
            raise NeurFlowError(
                "selection",
                "labels for 'labelled' selection",
                "data without labels",
                "use {p:selection} predicted or give labelled data",
            )
        chosen = torch.as_tensor(data.labels)
        what = "labelled as"
    else:
        chosen = pred.classes
        what = "predicted as"
    chosen = chosen.long()
    counts = torch.bincount(chosen[chosen >= 0], minlength=n_classes).tolist()
    empty = [i for i in indices if counts[i] == 0]
    if empty:
        shown = ", ".join(_name(i, names) for i in empty[:10]) + (
            f", ... ({len(empty)} in all)" if len(empty) > 10 else ""
        )
        raise NeurFlowError(
            "targets",
            f"classes with at least one image {what} them",
            shown,
            "leave those out of {p:targets}",
        )
    classes = [(i, names[i] if names and i < len(names) else None) for i in indices]
    return Prepared(plan, loaded, data, pred, classes, {i: int(counts[i]) for i in indices})


def _name(index: int, names) -> str:
    return f"{index} ({names[index]})" if names and index < len(names) else str(index)
