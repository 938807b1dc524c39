"""Experiments on single nodes: E3 edge weights, E4 other attribution methods, E5 aggregation,
E6 optimality, E8 the choice of k, E11 IG against filter-weight norms.

A node's *fidelity score* for a set of lower channels is the top-k overlap of its crops after the
set is masked (zeroed at the lower layer): |top-k before and top-k after| / k, over the run's crop
pool (or ``max_crops`` of it drawn with the seed, plus the node's exemplars).  Masking channels
that matter lowers the overlap.  Nodes: the class node, and for the layers below the ``nodes``
nodes that receive the largest importance from the layer above.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..._state import preserved
from ...errors import NeurFlowError
from ...neurons import response
from ...progress import progress
from .common import (
    Checkpoint,
    Context,
    channels,
    eval_crops,
    ig_importance,
    knockoff_statistics,
    layer_responses,
    masked,
    node_responses,
    pearson,
    save,
    seeded,
    topk_overlap,
    unit_seed,
)


def pick_nodes(ctx: Context, i: int) -> list[int]:
    layer = ctx.run.circuit.layers[i]
    if i == 0:
        return [ctx.run.target]
    above = ctx.run.circuit.layers[i - 1]
    got: dict = {}
    for node in above.nodes.values():
        for j, imp in zip(node.core, node.importance or [1.0] * len(node.core)):
            got[j] = got.get(j, 0.0) + float(imp)
    ranked = sorted(layer.nodes, key=lambda n: (-got.get(n, 0.0), n))
    return ranked[: ctx.opts.nodes]


def _k(ctx: Context) -> int:
    return ctx.run.config.top_k


def _subsets(ctx: Context, c_low: int, rng) -> list[list[int]]:
    out = []
    for size in ctx.opts.sizes:
        if size <= c_low:
            out += [sorted(rng.choice(c_low, size, replace=False).tolist()) for _ in range(ctx.opts.subsets)]
    return out


def _scores(ctx: Context, upper: str, lower: str, node: int, sets: list, desc: str) -> list[float]:
    """Top-k overlap of ``node``'s crops after masking each set."""
    k = _k(ctx)
    before_all = node_responses(ctx, upper, node)
    # the evaluation crops depend on the seed only, so every experiment measures on the same crops
    crops = eval_crops(
        ctx, np.argsort(-before_all, kind="stable")[:k], np.random.RandomState(unit_seed(ctx.opts.seed, 1))
    )
    before = before_all[crops]
    after = masked(ctx, upper, lower, node, sets, crops, desc)
    return [topk_overlap(before, a, k) for a in after]


def _pairs(ctx: Context, deep: bool = True) -> list[tuple[int, str, str, int]]:
    layers = ctx.run.circuit.layers
    out = [(0, layers[0].name, layers[0].lower, ctx.run.target)]
    if deep and len(layers) > 1:
        out += [(1, layers[1].name, layers[1].lower, n) for n in pick_nodes(ctx, 1)]
    return out


def edge_correlation(ctx: Context) -> dict:
    """E3 and E5: r(score, sum of the subset's IG importances) and r(score, their mean)."""
    o = ctx.opts
    ck = Checkpoint(
        ctx.run.dir, "edge-correlation", o.key("subsets", "sizes", "max_crops", "nodes", "seed"), ctx.run.identity
    )
    rows = []
    for _i, upper, lower, node in _pairs(ctx):
        unit = f"{upper}:{node}"
        row = ck.get(unit)
        if row is None:
            with seeded(ctx) as rng:
                _, imp = ig_importance(ctx, upper, lower, node, _k(ctx))
                sets = _subsets(ctx, len(imp), rng)
                scores = _scores(ctx, upper, lower, node, sets, f"E3 {upper}/{node}")
            total = [float(imp[s].sum()) for s in sets]
            mean = [float(imp[s].mean()) for s in sets]
            row = {
                "layer": upper,
                "lower": lower,
                "node": node,
                "n_subsets": len(sets),
                "pearson_sum": pearson(total, scores),
                "pearson_mean": pearson(mean, scores),
                "points": [[len(s), t, sc] for s, t, sc in zip(sets, total, scores)],
            }
            ck.put(unit, row)
        rows.append(row)
    result = {
        "experiment": "edge weights (E3) and aggregation (E5)",
        "target": ctx.run.target,
        "nodes": rows,
        "options": o.key("subsets", "sizes", "max_crops", "nodes", "seed"),
    }
    ck.done()
    ctx.cache["edge-correlation"] = result

    def plot(plt, r):
        fig, axes = plt.subplots(1, len(r["nodes"]), figsize=(4.2 * len(r["nodes"]), 3.6), squeeze=False)
        for ax, row in zip(axes[0], r["nodes"]):
            p = np.asarray(row["points"], float)
            sc = ax.scatter(p[:, 1], p[:, 2], c=np.log(p[:, 0]), s=8, cmap="viridis")
            ax.set_xlabel("sum of the subset's IG importance")
            ax.set_title(
                f"{row['layer']}/{row['node']}: r = {row['pearson_sum']:.2f} (mean: {row['pearson_mean']:.2f})"
                if row["pearson_sum"] is not None
                else f"{row['layer']}/{row['node']}",
                fontsize=9,
            )
        axes[0][0].set_ylabel("top-k overlap after masking")
        fig.colorbar(sc, ax=axes[0][-1], label="log subset size")
        return fig

    return save(ctx.run.dir, "edge-correlation", result, plot)


def aggregation(ctx: Context) -> dict:
    """E5 on its own: the sum/mean comparison of E3 for every chosen node."""
    r = ctx.cache.get("edge-correlation") or edge_correlation(ctx)  # E3's result of this context, or run it
    rows = [
        {k: row[k] for k in ("layer", "lower", "node", "n_subsets", "pearson_sum", "pearson_mean")}
        for row in r["nodes"]
    ]
    result = {
        "experiment": "aggregation: sum vs mean (E5)",
        "target": ctx.run.target,
        "nodes": rows,
        "options": r["options"],
        "notes": ["computed from the edge-correlation (E3) subsets"],
    }

    def plot(plt, res):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = np.arange(len(res["nodes"]))
        ax.bar(x - 0.2, [row["pearson_sum"] or 0 for row in res["nodes"]], 0.4, label="sum")
        ax.bar(x + 0.2, [row["pearson_mean"] or 0 for row in res["nodes"]], 0.4, label="mean")
        ax.set_xticks(x, [f"{row['layer']}/{row['node']}" for row in res["nodes"]])
        ax.set_ylabel("Pearson r with the top-k overlap")
        ax.axhline(0, color="#999", lw=0.8)
        ax.legend()
        return fig

    return save(ctx.run.dir, "aggregation", result, plot)


class _Node(torch.nn.Module):
    """The segment lower -> upper reduced to one node's response (for captum)."""

    def __init__(self, segment, extras, node):
        super().__init__()
        self.segment, self.extras, self.node = segment, extras, node

    def forward(self, x):
        # captum may stack several copies of the batch (noise samples, baselines): the extras follow
        ex = [
            e.repeat(x.shape[0] // e.shape[0], *([1] * (e.ndim - 1))) if x.shape[0] != e.shape[0] else e
            for e in self.extras
        ]
        return response(self.segment(x, *ex))[:, self.node]


def _captum():
    """``captum.attr``, or the one-line error that E4 needs it."""
    try:
        import captum.attr as ca
    except ImportError:
        raise NeurFlowError(
            "EXPERIMENT", "captum installed for the methods experiment (E4)", "methods", "pip install 'neurflow[eval]'"
        ) from None
    return ca


def _captum_methods(ctx: Context, ca, wrapper: _Node, acts: torch.Tensor) -> dict:
    """{method: a function computing its attribution of ``wrapper`` at ``acts``}, in the order tried."""
    return {
        "saliency": lambda: ca.Saliency(wrapper).attribute(acts.clone().requires_grad_(True), abs=True),
        "guided_backprop": lambda: ca.GuidedBackprop(wrapper).attribute(acts.clone().requires_grad_(True)),
        "lrp": lambda: ca.LRP(wrapper).attribute(acts.clone().requires_grad_(True)),
        "smoothgrad_ig": lambda: ca.NoiseTunnel(ca.IntegratedGradients(wrapper)).attribute(
            acts.clone(),
            nt_type="smoothgrad",
            nt_samples=5,
            stdevs=float(acts.std()) * 0.1,
            n_steps=20,
            internal_batch_size=ctx.run.config.batch_size,
        ),
        "gradient_shap": lambda: ca.GradientShap(wrapper).attribute(
            acts.clone(), baselines=torch.stack([torch.zeros_like(acts[0]), acts.mean(0)]), n_samples=20
        ),
    }


def _captum_importances(ctx: Context, ca, upper: str, lower: str, node: int, ex) -> tuple[dict, dict, list[str]]:
    """({method: mean |attribution| per lower channel}, {method: seconds}, notes) of captum's methods
    on ``node``'s exemplars ``ex``; a method captum cannot apply here is a note."""
    prefix, segment = ctx.run.graph.cut(lower, upper, ctx.run.config.norm_rule)  # as the run's IG saw it
    with torch.no_grad():
        acts, *extras = prefix(ctx.run.pool.get(ex).to(ctx.run.config.device))
    tries = _captum_methods(ctx, ca, _Node(segment, extras, node), acts)
    imps: dict = {}
    timing: dict = {}
    notes: list[str] = []
    import warnings

    with preserved(ctx.run.model, freeze=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum's notes on hooks and internal batch sizes
        for name, fn in tries.items():
            t0 = time.perf_counter()
            try:
                attr = fn().detach()
            except Exception as exc:  # noqa: BLE001 - a method captum cannot apply here is reported
                notes.append(f"{name}: not applicable here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            timing[name] = time.perf_counter() - t0
            imps[name] = response(attr.abs()).double().mean(0).cpu().numpy()
    return imps, timing, notes


def _knockoff_importance(ctx: Context, upper: str, lower: str, node: int, ex) -> tuple[dict, dict, list[str]]:
    """Knockoffs, as ``_captum_importances``: the lower responses of the evaluation crops as features,
    the node's response as target (a note when knockpy is not installed)."""
    crops = eval_crops(ctx, ex, np.random.RandomState(unit_seed(ctx.opts.seed, 1)))
    try:
        t0 = time.perf_counter()
        x = layer_responses(ctx, lower, ctx.run.pool.get(crops))
        imp = knockoff_statistics(x, node_responses(ctx, upper, node)[crops], ctx.opts.seed)
        return {"knockoffs": imp}, {"knockoffs": time.perf_counter() - t0}, []
    except ImportError:
        return {}, {}, ["knockoffs: skipped, knockpy is not installed (pip install knockpy)"]


def _plot_methods(plt, r):
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ms = [row["method"] for row in r["methods"]]
    ax.barh(ms, [row["pearson"] or 0 for row in r["methods"]], color="#1565c0")
    ax.set_xlabel("Pearson r(sum of importance, top-k overlap after masking)")
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_title(r["experiment"])
    return fig


def methods(ctx: Context) -> dict:
    """E4: E3's correlation with importances from other attribution methods, and their run time
    (under the seed: SmoothGrad and GradientShap draw noise and baselines from the global generators)."""
    ca = _captum()
    with seeded(ctx):
        return _methods(ctx, ca)


def _methods(ctx: Context, ca) -> dict:
    o = ctx.opts
    _i, upper, lower, node = _pairs(ctx, deep=False)[0]
    k = _k(ctx)
    rng = np.random.RandomState(o.seed)  # E3's subsets (the same draws as its first unit)
    ex, ig = ig_importance(ctx, upper, lower, node, k)
    t0 = time.perf_counter()
    ig_importance(ctx, upper, lower, node, k)
    timing = {"integrated_gradients": time.perf_counter() - t0}
    sets = _subsets(ctx, len(ig), rng)
    scores = _scores(ctx, upper, lower, node, sets, f"E4 {upper}/{node}")
    c_imps, c_timing, c_notes = _captum_importances(ctx, ca, upper, lower, node, ex)
    k_imps, k_timing, k_notes = _knockoff_importance(ctx, upper, lower, node, ex)
    imps = {"integrated_gradients": ig, **c_imps, **k_imps}
    timing.update({**c_timing, **k_timing})
    notes = c_notes + k_notes
    rows = [
        {"method": m, "pearson": pearson([float(v[s].sum()) for s in sets], scores), "seconds": round(timing[m], 4)}
        for m, v in imps.items()
    ]
    result = {
        "experiment": "attribution methods (E4)",
        "target": ctx.run.target,
        "layer": upper,
        "lower": lower,
        "node": node,
        "n_subsets": len(sets),
        "methods": rows,
        "notes": notes,
        "options": o.key("subsets", "sizes", "max_crops", "seed"),
    }
    return save(ctx.run.dir, "methods", result, _plot_methods)


def optimality(ctx: Context) -> dict:
    """E6: the core set's top-k overlap after masking vs random sets of the same size."""
    o = ctx.opts
    ck = Checkpoint(ctx.run.dir, "optimality", o.key("random_sets", "max_crops", "nodes", "seed"), ctx.run.identity)
    rows = []
    jobs = [(i, n) for i in range(len(ctx.run.circuit.layers)) for n in pick_nodes(ctx, i)]
    for i, node in jobs:
        layer = ctx.run.circuit.layers[i]
        unit = f"{layer.name}:{node}"
        row = ck.get(unit)
        if row is None:
            core = list(layer.nodes[node].core)
            width = channels(ctx, layer.lower)
            with seeded(ctx) as rng:
                sets = [core] + [
                    sorted(rng.choice(width, len(core), replace=False).tolist()) for _ in range(o.random_sets)
                ]
                s = _scores(ctx, layer.name, layer.lower, node, sets, f"E6 {layer.name}/{node}")
            rand = np.asarray(s[1:])
            row = {
                "layer": layer.name,
                "lower": layer.lower,
                "node": node,
                "core_size": len(core),
                "core_overlap": s[0],
                "random_overlap_mean": float(rand.mean()),
                "random_overlap_min": float(rand.min()),
                "share_random_at_or_above_core": float((rand >= s[0]).mean()),
                "random": rand.tolist(),
            }
            ck.put(unit, row)
        rows.append(row)
    result = {
        "experiment": "optimality of the core set (E6)",
        "target": ctx.run.target,
        "nodes": rows,
        "options": o.key("random_sets", "max_crops", "nodes", "seed"),
    }
    ck.done()

    def plot(plt, r):
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(r["nodes"]), 3.6))
        ax.boxplot([row["random"] for row in r["nodes"]], showfliers=True)
        ax.scatter(
            np.arange(1, len(r["nodes"]) + 1),
            [row["core_overlap"] for row in r["nodes"]],
            color="#c62828",
            zorder=3,
            label="core set",
        )
        ax.set_xticks(
            np.arange(1, len(r["nodes"]) + 1), [f"{row['layer']}/{row['node']}" for row in r["nodes"]], rotation=20
        )
        ax.set_ylabel("top-k overlap after masking")
        ax.legend(fontsize=8)
        ax.set_title(r["experiment"])
        return fig

    return save(ctx.run.dir, "optimality", result, plot)


def k_impact(ctx: Context) -> dict:
    """E8: overlap of the top-tau core set at k with the one at the run's k (50 in the paper)."""
    o = ctx.opts
    _, upper, lower, node = _pairs(ctx, deep=False)[0]
    tau = ctx.run.config.tau
    ref_k = _k(ctx)  # the run's k (the paper: 50)
    ks = sorted({k for k in o.ks if 1 <= k <= len(ctx.run.pool)} | {ref_k})
    sets = {}
    bar = progress(total=len(ks), desc="E8 k", quiet=ctx.run.quiet, unit="k")
    for k in ks:
        bar.update(1)
        _, imp = ig_importance(ctx, upper, lower, node, k)
        sets[k] = set(np.argsort(-imp, kind="stable")[:tau].tolist())
    bar.close()
    rows = [{"k": k, "overlap_with_reference": len(sets[k] & sets[ref_k]) / tau} for k in ks]
    result = {
        "experiment": "impact of k (E8)",
        "target": ctx.run.target,
        "layer": upper,
        "lower": lower,
        "node": node,
        "tau": tau,
        "reference_k": ref_k,
        "ks": rows,
        "options": o.key("ks"),
    }

    def plot(plt, r):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot([row["k"] for row in r["ks"]], [row["overlap_with_reference"] for row in r["ks"]], "o-")
        ax.axvline(r["reference_k"], color="#999", lw=0.8)
        ax.set_xlabel("k (exemplar crops)")
        ax.set_ylabel(f"overlap with the core set at k = {r['reference_k']}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(r["experiment"])
        return fig

    return save(ctx.run.dir, "k", result, plot)


def _weight_for(ctx: Context, upper: str, c_low: int):
    """The first weight of module ``upper`` that maps the lower channels ([C_up, C_low, ...])."""
    for name, p in ctx.run.model.get_submodule(upper).named_parameters():
        if p.ndim >= 2 and p.shape[1] == c_low:
            return name, p.detach()
    return None, None


def weight_norm(ctx: Context) -> dict:
    """E11: the core set by IG against the top-tau channels by the L2 norm of the filter weights."""
    o = ctx.opts
    rows, notes = [], []
    for i, upper, lower, node in _pairs(ctx):
        width = channels(ctx, lower)
        pname, w = _weight_for(ctx, upper, width)
        if w is None or node >= w.shape[0]:
            notes.append(f"{upper}: no weight of the module maps {lower}'s {width} channels directly; skipped")
            continue
        core = list(ctx.run.circuit.layers[i].nodes[node].core)
        norms = w[node].flatten(1).norm(dim=1).double().numpy() if w.ndim > 2 else w[node].abs().double().numpy()
        by_norm = sorted(np.argsort(-norms, kind="stable")[: len(core)].tolist())
        s = _scores(ctx, upper, lower, node, [core, by_norm], f"E11 {upper}/{node}")
        rows.append(
            {
                "layer": upper,
                "lower": lower,
                "node": node,
                "weight": pname,
                "core_size": len(core),
                "set_overlap": len(set(core) & set(by_norm)) / len(core),
                "ig_core_topk_overlap_after_masking": s[0],
                "weight_norm_topk_overlap_after_masking": s[1],
            }
        )
    result = {
        "experiment": "IG vs filter-weight norm (E11)",
        "target": ctx.run.target,
        "nodes": rows,
        "notes": notes,
        "options": o.key("max_crops", "nodes", "seed"),
    }

    def plot(plt, r):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = np.arange(len(r["nodes"]))
        ax.bar(x - 0.2, [row["ig_core_topk_overlap_after_masking"] for row in r["nodes"]], 0.4, label="IG core set")
        ax.bar(
            x + 0.2, [row["weight_norm_topk_overlap_after_masking"] for row in r["nodes"]], 0.4, label="weight-norm set"
        )
        ax.set_xticks(x, [f"{row['layer']}/{row['node']}" for row in r["nodes"]])
        ax.set_ylabel("top-k overlap after masking (lower: more faithful)")
        ax.legend(fontsize=8)
        return fig

    return save(ctx.run.dir, "weight-norm", result, plot)
