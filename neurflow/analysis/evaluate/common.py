"""What the experiments share: the invocation's context (the reopened ``Run`` and the options),
interventions, top-k overlaps, IG importances, checkpoints (resume) and output files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ...config import SEED_LIMIT
from ...method import attribute, ig_steps, rank_core, top_exemplars
from ...method.probe import image_responses, layer_width, logits, masked_responses
from ...neurons import masks_for
from ...options import EvalOptions
from ...store import RunDir, atomic_write, write_json
from ..run import Run

log = logging.getLogger(__name__)


# the experiments' options live in neurflow/options.py (torch-free: the CLI's flags are built from them)
Options = EvalOptions


@dataclass
class Context:
    """One ``neurflow eval`` invocation: the reopened run, the experiments' options, and what
    experiments of the same invocation share (E3's result for E5)."""

    run: Run
    opts: Options
    cache: dict = field(default_factory=dict)


def unit_seed(seed: int, offset: int = 0) -> int:
    """The seed ``offset`` steps after ``seed``, within numpy's range (2**32 - 1 + 1 is 0)."""
    return (seed + offset) % SEED_LIMIT


@contextlib.contextmanager
def seeded(ctx: Context) -> Iterator[np.random.RandomState]:
    """A unit of an experiment's work under the eval's seed: inside, torch's and numpy's global
    generators (captum's SmoothGrad and GradientShap, knockpy draw from them) are seeded with it
    and a ``RandomState`` of it is yielded for the unit's own draws; the caller's generators are
    restored afterwards.  Every unit starts from the same state, so the same command gives the
    same numbers, and a resumed experiment computes the units it has left as an uninterrupted one."""
    seed = ctx.opts.seed
    device = torch.device(ctx.run.config.device)
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield np.random.RandomState(seed)
        finally:
            np.random.set_state(state)


def class_accuracy(ctx: Context, zero: dict | None = None) -> float:
    """Share of the class images still predicted as the target with ``zero`` ({layer: channels})."""
    run = ctx.run
    axes = run.graph.axes if zero else None  # where --channel-axis put each layer's channels
    out = logits(run.model, run.class_images, zero or {}, run.config.batch_size, run.config.device, axes=axes)
    return float((out.argmax(1) == run.target).float().mean())


def eval_crops(ctx: Context, keep: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """The crops top-k overlaps are measured on: all, or ``max_crops`` drawn (seeded) plus ``keep``."""
    n = len(ctx.run.pool)
    m = ctx.opts.max_crops
    if not m or m >= n:
        return np.arange(n)
    return np.union1d(rng.choice(n, m, replace=False), np.asarray(keep, dtype=np.int64))


def masked(
    ctx: Context, upper: str, lower: str, node: int, sets: list, crops: np.ndarray, desc: str = ""
) -> np.ndarray:
    """Responses of ``node`` (at ``upper``) on ``crops`` with each channel set of ``sets`` zeroed at
    ``lower``: [len(sets), len(crops)]."""
    run, cfg = ctx.run, ctx.run.config
    masks = masks_for(sets, channels(ctx, lower))
    return masked_responses(
        run.graph, run.pool, upper, lower, node, masks, crops, cfg.batch_size, cfg.device, run.quiet, desc
    )


def topk_overlap(before: np.ndarray, after: np.ndarray, k: int) -> float:
    """|top-k of ``before`` and top-k of ``after``| / k (indices into the same crops)."""
    a = set(np.argsort(-before, kind="stable")[:k].tolist())
    b = set(np.argsort(-after, kind="stable")[:k].tolist())
    return len(a & b) / k


def channels(ctx: Context, name: str) -> int:
    return layer_width(ctx.run.graph, ctx.run.pool, name, ctx.run.config.device)


def ig_importance(ctx: Context, upper: str, lower: str, node: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(exemplars, mean |IG| per lower channel) of ``node`` over its top-k crops (the run's rule)."""
    run = ctx.run
    ex = top_exemplars(run.responses(upper)[:, node][:, None], 0, k)
    chosen = run.circuit.layer(upper).completeness_gap.get("ig_steps")  # the order --ig-steps auto chose there
    steps = int(chosen) if chosen else ig_steps(run.graph, run.pool, upper, lower, {node: ex}, run.config)
    scores, _ = attribute(run.graph, run.pool, upper, lower, {node: ex}, run.config, steps)
    return ex, rank_core(scores[node])[1]


def node_responses(ctx: Context, layer: str, node: int) -> np.ndarray:
    """Response of ``node`` at ``layer`` on every crop of the pool."""
    return ctx.run.responses(layer)[:, node]


def layer_responses(ctx: Context, name: str, images: torch.Tensor) -> np.ndarray:
    """Responses [N, C] of every channel of ``name`` for ``images``."""
    cfg = ctx.run.config
    return image_responses(ctx.run.graph, name, images, cfg.batch_size, cfg.device)


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


class Checkpoint:
    """Per-unit results of an experiment in DIR/eval/<name>.partial.json; a rerun with the same
    options, run, model weights and class images (``identity``) skips the finished units.  The
    file carries a hash of its units: a damaged one (truncated, changed) is not resumed from."""

    def __init__(self, directory, name: str, options: dict, identity: str = ""):
        self.layout = directory if isinstance(directory, RunDir) else RunDir(directory)
        self.path = self.layout.eval_partial(name)
        self.options = {**options, "identity": identity}
        self.units: dict = {}
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError):
            doc = None
        units = doc.get("units") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or not isinstance(units, dict)
            or doc.get("sha256", _digest(units)) != _digest(units)
        ):
            log.warning("%s: %s is damaged; starting the experiment afresh", name, self.path)
        elif doc.get("options") == self.options:
            self.units = units
            if self.units:
                log.info("%s: resuming, %d unit(s) done", name, len(self.units))

    def get(self, unit: str):
        return self.units.get(unit)

    def put(self, unit: str, value) -> None:
        self.units[unit] = value
        with self.layout.locked():  # keyed by the run's identity: a run replaced meanwhile never resumes from it
            write_json(self.path, {"options": self.options, "units": self.units, "sha256": _digest(self.units)})

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _digest(units) -> str:
    return hashlib.sha256(json.dumps(units, sort_keys=True).encode()).hexdigest()


def save(directory, name: str, result: dict, plot) -> dict:
    """DIR/eval/<name>.json and, when matplotlib is present, DIR/eval/<name>.png (under the run
    directory's lock, into the run the experiment read)."""
    layout = directory if isinstance(directory, RunDir) else RunDir(directory)
    png = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import io

        import matplotlib.pyplot as plt

        fig = plot(plt, result)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        png = buf.getvalue()
        result["plot"] = f"eval/{name}.png"
    except ImportError:
        result["plot"] = None
        result.setdefault("notes", []).append("no plot: matplotlib is not installed (pip install matplotlib)")
    with layout.updating():
        if png is not None:
            atomic_write(layout.eval_file(name, "png"), png)
        write_json(layout.eval_file(name), result)
    return result


def knockoff_statistics(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Model-X knockoff statistics W (Gaussian knockoffs, lasso coefficient differences) of the
    columns of ``x`` for predicting ``y``, through knockpy (``pip install knockpy``).  Larger W:
    the feature matters more than its knockoff.  Raises ImportError without knockpy."""
    import knockpy

    x = np.asarray(x, dtype=np.float64)
    keep = x.std(axis=0) > 1e-8  # constant channels carry nothing; W = 0
    w = np.zeros(x.shape[1])
    if keep.sum() >= 2:
        state = np.random.get_state()
        np.random.seed(seed)  # knockpy samples with numpy's global generator
        try:
            kf = knockpy.KnockoffFilter(ksampler="gaussian", fstat="lasso")
            kf.forward(X=x[:, keep], y=np.asarray(y, dtype=np.float64), fdr=0.1)
        finally:
            np.random.set_state(state)
        w[keep] = kf.W
    return w
