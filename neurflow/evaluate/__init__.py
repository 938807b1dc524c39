"""``neurflow eval DIR EXPERIMENT``: the paper's experiments (method.md section 6), fixed, on any run.

Each experiment reopens the run (model and data), writes ``DIR/eval/<name>.json`` and a plot
``DIR/eval/<name>.png``, and shows in the report.  Long ones save finished units to
``DIR/eval/<name>.partial.json`` and resume from there when rerun with the same options.
"""

from __future__ import annotations

import numpy as np

from ..errors import unknown_name
from ..run import Run
from .common import Context, Options, save
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


EXPERIMENTS = {
    "fidelity": fidelity,
    "mct": mct,
    "edge-correlation": edge_correlation,
    "methods": methods,
    "aggregation": aggregation,
    "optimality": optimality,
    "k": k_impact,
    "crop-sizes": crop_sizes,
    "overlap": overlap,
    "weight-norm": weight_norm,
}
PAPER_IDS = {
    "fidelity": "E1",
    "mct": "E2",
    "edge-correlation": "E3",
    "methods": "E4",
    "aggregation": "E5",
    "optimality": "E6",
    "k": "E8",
    "crop-sizes": "E9",
    "overlap": "E10",
    "weight-norm": "E11",
}


def run_eval(run: Run, experiment: str, opts: Options | None = None) -> dict:
    """Run one experiment (or ``all``) on a reopened ``Run`` (or a run directory); returns {name: result}."""
    if experiment != "all" and experiment not in EXPERIMENTS:
        raise unknown_name("experiment", experiment, list(EXPERIMENTS) + ["all"])
    run = run if isinstance(run, Run) else Run(run)
    ctx = Context(run, opts or Options())
    run.pool  # noqa: B018 - check the data against the run before any experiment starts
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    return {name: EXPERIMENTS[name](ctx) for name in names}


__all__ = ["EXPERIMENTS", "PAPER_IDS", "Context", "Options", "run_eval"]
