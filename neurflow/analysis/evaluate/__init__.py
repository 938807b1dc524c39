"""``neurflow eval DIR EXPERIMENT``: the paper's experiments (method.md section 6), fixed, on any run.

Each experiment reopens the run (model and data), writes ``DIR/eval/<name>.json`` and a plot
``DIR/eval/<name>.png``, and shows in the report.  Long ones save finished units to
``DIR/eval/<name>.partial.json`` and resume from there when rerun with the same options.
"""

from __future__ import annotations

import numpy as np

from ...errors import unknown_name
from ...options import EXPERIMENT_NAMES
from ..run import Run
from .common import Context, Options, save, seeded
from .edges import aggregation, edge_correlation, k_impact, methods, optimality, weight_norm
from .fidelity import fidelity, mct, overlap


def crop_sizes(ctx: Context) -> dict:
    """E9: share of each crop size among the display exemplars, per layer."""
    box = ctx.run.circuit.arrays["crop_box"]
    sizes = sorted({int(s) for s in np.unique(box[:, 2])})
    pool = np.bincount(box[:, 2], minlength=max(sizes) + 1)
    rows = []
    for layer in ctx.run.circuit.layers:
        shown = [c for n in layer.nodes.values() for s in n.sub_concepts for c in s.display_exemplars]
        counts = np.bincount(box[shown, 2], minlength=max(sizes) + 1) if shown else np.zeros(max(sizes) + 1)
        rows.append(
            {
                "layer": layer.name,
                "n_display": len(shown),
                "share": {str(s): float(counts[s] / max(1, len(shown))) for s in sizes},
            }
        )
    result = {
        "experiment": "crop sizes of the display exemplars (E9)",
        "target": ctx.run.target,
        "sizes": sizes,
        "pool_share": {str(s): float(pool[s] / pool.sum()) for s in sizes},
        "layers": rows,
    }

    def plot(plt, r):
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        bottom = np.zeros(len(r["layers"]))
        for s in r["sizes"]:
            v = np.array([row["share"][str(s)] for row in r["layers"]])
            ax.bar([row["layer"] for row in r["layers"]], v, bottom=bottom, label=f"{s} px")
            bottom += v
        ax.set_ylabel("share of display exemplars")
        ax.legend(fontsize=8)
        ax.set_title(r["experiment"])
        return fig

    return save(ctx.run.dir, "crop-sizes", result, plot)


# what runs each experiment of ``options.EXPERIMENT_NAMES`` (the names and their order come from there)
_REGISTRY = {
    "fidelity": ("E1", fidelity),
    "mct": ("E2", mct),
    "edge-correlation": ("E3", edge_correlation),
    "methods": ("E4", methods),
    "aggregation": ("E5", aggregation),
    "optimality": ("E6", optimality),
    "k": ("E8", k_impact),
    "crop-sizes": ("E9", crop_sizes),
    "overlap": ("E10", overlap),
    "weight-norm": ("E11", weight_norm),
}
if set(_REGISTRY) != set(EXPERIMENT_NAMES):
    raise RuntimeError(
        f"options.EXPERIMENT_NAMES {sorted(EXPERIMENT_NAMES)} and the experiments {sorted(_REGISTRY)} differ"
    )
EXPERIMENTS = {name: _REGISTRY[name][1] for name in EXPERIMENT_NAMES}  # name -> function, in the order `all` runs
PAPER_IDS = {name: _REGISTRY[name][0] for name in EXPERIMENT_NAMES}  # name -> the experiment's id in the paper


def run_eval(run: Run, experiment: str, opts: Options | None = None) -> dict:
    """Run one experiment (or ``all``) on a run; each writes ``DIR/eval/<name>.json`` (and its plot).

    Parameters
    ----------
    run : Run or path
        A reopened ``Run``, or a finished run directory (reopened with its recorded model and data).
    experiment : str
        A name of ``EXPERIMENTS`` (``options.EXPERIMENT_NAMES``), or ``"all"``: every one, in that order.
    opts : Options, optional
        The experiments' options (draws, subset sizes, seed...); default: ``Options()``.

    Returns
    -------
    dict
        ``{name: result}`` of the experiments run, each result as written to ``DIR/eval/<name>.json``.
    """
    if experiment != "all" and experiment not in EXPERIMENTS:
        raise unknown_name("experiment", experiment, list(EXPERIMENTS) + ["all"])
    run = run if isinstance(run, Run) else Run(run)
    ctx = Context(run, opts or Options())
    run.pool  # noqa: B018 - check the data against the run before any experiment starts
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    results = {}
    for name in names:  # each from the seed, whatever ran before it (a resumed `all` equals an uninterrupted one)
        with seeded(ctx):
            results[name] = EXPERIMENTS[name](ctx)
    return results


__all__ = ["EXPERIMENTS", "PAPER_IDS", "Context", "Options", "run_eval"]
