"""What the experiments share: the reopened run (model, class images, crop pool), interventions,
top-k overlaps, IG importances, checkpoints (resume) and output files."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifact import atomic_write, hash_tensors, model_hash, write_json
from ..circuit import Circuit
from ..config import NeurFlowConfig
from ..core import attribute, channel_mask, rank_core
from ..crops import CropPool
from ..data import select_class_images
from ..errors import NeurFlowError
from ..intervene import logits
from ..layers import LayerGraph, preserved, response
from ..progress import progress

log = logging.getLogger(__name__)


@dataclass
class Options:
    draws: int = 10            # random baselines per setting (E1, E2)
    subsets: int = 20          # random channel subsets per size (E3, E4, E5)
    sizes: tuple = (1, 5, 10, 20, 50)
    random_sets: int = 100     # random sets compared with the core set (E6)
    nodes: int = 1             # nodes per layer below the class layer (E3, E5, E6, E11)
    max_crops: int = 1000      # crops of the pool used for top-k overlaps (0: all)
    max_images: int = 256      # class images for NeuronMCT's IG (E2, E10)
    ks: tuple = (10, 30, 50, 70, 90, 110, 130, 150, 170, 190)
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    quiet: bool = False

    def key(self, *names) -> dict:
        d = self.__dict__
        return {n: (list(d[n]) if isinstance(d[n], tuple) else d[n]) for n in names}


@dataclass
class Context:
    dir: Path
    circuit: Circuit
    model: torch.nn.Module
    images: torch.Tensor          # the class images
    pool: CropPool
    graph: LayerGraph
    opts: Options
    layer_names: list = field(default_factory=list)   # analysed layers top down + the input layer
    identity: str = ""            # hash of the run, the model weights and the class images (checkpoint key)
    cache: dict = field(default_factory=dict)         # per-context: pool responses of one layer, E3's result

    @property
    def target(self) -> int:
        return self.circuit.target

    def config(self, **over) -> NeurFlowConfig:
        s = {k: v for k, v in self.circuit.settings.items() if k not in ("layers", "target")}
        return NeurFlowConfig.from_dict({**s, "batch_size": self.opts.batch_size, "device": self.opts.device, **over})

    def node_set(self, name: str) -> list[int]:
        """The circuit's neurons at a layer: its nodes, or for the input layer the union of the cores."""
        if name == self.circuit.input_layer:
            return sorted({j for n in self.circuit.layers[-1].nodes.values() for j in n.core})
        return sorted(self.circuit.layer(name).nodes)


def open_context(run, opts: Options) -> Context:
    """The run's class images (selected as the run did) and crop pool, checked against the run."""
    c = run.circuit
    data = run.data
    s = c.settings
    base = logits(run.model, data.images, batch_size=opts.batch_size, device=opts.device)
    images, _ = select_class_images(data.images, base, data.labels, c.target, s.get("selection", "predicted"))
    pool = CropPool(images, tuple(s.get("granularities", (1.0, 0.5, 0.25))), float(s.get("stride_ratio", 0.5)))
    if c.meta.get("n_crops") not in (None, len(pool)):
        raise NeurFlowError("--data", "the data of the run", data.spec,
                            f"it gives {len(pool)} crops, the run had {c.meta.get('n_crops')}")
    names = [l.name for l in c.layers] + [c.input_layer]
    import hashlib
    identity = hashlib.sha256("|".join([str(c.meta.get("run_hash", "")), model_hash(run.model),
                                        hash_tensors([("images", images)])]).encode()).hexdigest()[:32]
    return Context(run.dir, c, run.model, images, pool, LayerGraph(run.model, names), opts, names, identity)


def class_accuracy(ctx: Context, zero: dict | None = None) -> float:
    """Share of the class images still predicted as the target with ``zero`` ({layer: channels})."""
    out = logits(ctx.model, ctx.images, batch_size=ctx.opts.batch_size, device=ctx.opts.device, zero=zero or {})
    return float((out.argmax(1) == ctx.target).float().mean())


def eval_crops(ctx: Context, keep: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """The crops top-k overlaps are measured on: all, or ``max_crops`` drawn (seeded) plus ``keep``."""
    n = len(ctx.pool)
    m = ctx.opts.max_crops
    if not m or m >= n:
        return np.arange(n)
    return np.union1d(rng.choice(n, m, replace=False), np.asarray(keep, dtype=np.int64))


def masked_responses(ctx: Context, upper: str, lower: str, node: int, masks: torch.Tensor, crops: np.ndarray,
                     desc: str = "") -> np.ndarray:
    """Responses of ``node`` (at ``upper``) on ``crops`` with each mask ([M, C_lower], 1 keep, 0 zero)
    applied to the lower layer's channels: [M, len(crops)]."""
    prefix, segment = ctx.graph.prefix(lower, upper), ctx.graph.segment(lower, upper)
    out = np.zeros((masks.shape[0], len(crops)), dtype=np.float32)
    bs = ctx.opts.batch_size
    bar = progress(total=len(crops), desc=desc or f"masking {lower}", quiet=ctx.opts.quiet, unit="crop")
    with preserved(ctx.model), torch.no_grad():
        for start in range(0, len(crops), bs):
            idx = crops[start:start + bs]
            acts, *extras = prefix(ctx.pool.get(idx).to(ctx.opts.device))
            per = max(1, bs // len(idx))
            for m0 in range(0, masks.shape[0], per):
                mk = masks[m0:m0 + per].to(acts.device)
                x = channel_mask(acts, mk)
                ex = [e.repeat(mk.shape[0], *([1] * (e.ndim - 1))) for e in extras]
                r = response(segment(x, *ex)).view(mk.shape[0], len(idx), -1)[:, :, node]
                out[m0:m0 + mk.shape[0], start:start + len(idx)] = r.float().cpu().numpy()
            bar.update(len(idx))
    bar.close()
    return out


def topk_overlap(before: np.ndarray, after: np.ndarray, k: int) -> float:
    """|top-k of ``before`` and top-k of ``after``| / k (indices into the same crops)."""
    a = set(np.argsort(-before, kind="stable")[:k].tolist())
    b = set(np.argsort(-after, kind="stable")[:k].tolist())
    return len(a & b) / k


def masks_for(sets: list, c_low: int) -> torch.Tensor:
    m = torch.ones(len(sets), c_low)
    for i, s in enumerate(sets):
        m[i, torch.as_tensor(list(s), dtype=torch.long)] = 0
    return m


def channels(ctx: Context, name: str) -> int:
    with preserved(ctx.model), torch.no_grad():
        out = ctx.graph.recorder([name])(ctx.pool.get([0]).to(ctx.opts.device))[0]
    return int(out.shape[-1] if out.ndim == 3 else out.shape[1])


def ig_importance(ctx: Context, upper: str, lower: str, node: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(exemplars, mean |IG| per lower channel) of ``node`` over its top-k crops (the run's rule)."""
    from ..core import top_exemplars
    resp = node_responses(ctx, upper, node)
    ex = top_exemplars(resp[:, None], 0, k)
    scores, _ = attribute(ctx.graph, ctx.pool, upper, lower, {node: ex}, ctx.config(), quiet=True)
    return ex, rank_core(scores[node])[1]


def node_responses(ctx: Context, layer: str, node: int) -> np.ndarray:
    """Response of ``node`` at ``layer`` on every crop of the pool (cached in the context, one layer)."""
    key = ("responses", layer)
    if key not in ctx.cache:
        rec = ctx.graph.recorder([layer])
        out = []
        with preserved(ctx.model), torch.no_grad():
            for _, crops in ctx.pool.batches(ctx.opts.batch_size):
                out.append(response(rec(crops.to(ctx.opts.device))[0]).float().cpu())
        for old in [k for k in ctx.cache if isinstance(k, tuple) and k[0] == "responses"]:
            del ctx.cache[old]                    # one layer's responses at a time
        ctx.cache[key] = torch.cat(out).numpy()
    return ctx.cache[key][:, node]


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


class Checkpoint:
    """Per-unit results of an experiment in DIR/eval/<name>.partial.json; a rerun with the same
    options, run, model weights and class images (``identity``) skips the finished units."""

    def __init__(self, directory: Path, name: str, options: dict, identity: str = ""):
        self.path = Path(directory) / "eval" / f"{name}.partial.json"
        self.options = {**options, "identity": identity}
        self.units: dict = {}
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("options") == self.options:
                self.units = doc.get("units", {})
                if self.units:
                    log.info("%s: resuming, %d unit(s) done", name, len(self.units))
        except (OSError, ValueError):
            pass

    def get(self, unit: str):
        return self.units.get(unit)

    def put(self, unit: str, value) -> None:
        self.units[unit] = value
        write_json(self.path, {"options": self.options, "units": self.units})

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def save(directory: Path, name: str, result: dict, plot) -> dict:
    """DIR/eval/<name>.json and, when matplotlib is present, DIR/eval/<name>.png."""
    out = Path(directory) / "eval"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import io

        import matplotlib.pyplot as plt
        fig = plot(plt, result)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        atomic_write(out / f"{name}.png", buf.getvalue())
        result["plot"] = f"eval/{name}.png"
    except ImportError:
        result["plot"] = None
        result.setdefault("notes", []).append("no plot: matplotlib is not installed (pip install matplotlib)")
    write_json(out / f"{name}.json", result)
    return result


def knockoff_statistics(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Model-X knockoff statistics W (Gaussian knockoffs, lasso coefficient differences) of the
    columns of ``x`` for predicting ``y``, through knockpy (``pip install knockpy``).  Larger W:
    the feature matters more than its knockoff.  Raises ImportError without knockpy."""
    import knockpy
    x = np.asarray(x, dtype=np.float64)
    keep = x.std(axis=0) > 1e-8                   # constant channels carry nothing; W = 0
    w = np.zeros(x.shape[1])
    if keep.sum() >= 2:
        state = np.random.get_state()
        np.random.seed(seed)                      # knockpy samples with numpy's global generator
        try:
            kf = knockpy.KnockoffFilter(ksampler="gaussian", fstat="lasso")
            kf.forward(X=x[:, keep], y=np.asarray(y, dtype=np.float64), fdr=0.1)
        finally:
            np.random.set_state(state)
        w[keep] = kf.W
    return w


def layer_responses(ctx: Context, name: str, images: torch.Tensor) -> np.ndarray:
    """Responses [N, C] of every channel of ``name`` for ``images``."""
    rec = ctx.graph.recorder([name])
    out = []
    with preserved(ctx.model), torch.no_grad():
        for start in range(0, images.shape[0], ctx.opts.batch_size):
            out.append(response(rec(images[start:start + ctx.opts.batch_size].to(ctx.opts.device))[0]).float().cpu())
    return torch.cat(out).numpy()
