"""E1 fidelity of the core neurons, E2 against NeuronMCT, E10 overlap of selection methods.

E1: at each analysed layer (and the input layer), zero the circuit's neurons there (*mask*) or
every other channel (*retain*), at that layer alone (``layers``) or at it and every analysed layer
above it (``multi_layer``); the metric is the share of the class images still predicted as the
class.  Baseline: random channel sets of the same sizes, ``draws`` times (mean and std).
E2: the same with NeuronMCT's channels (ranked by mean |IG| of the class logit w.r.t. the layer's
activation over class images) in place of the random sets (the published script never applied
this mask).  E10: how much the NeurFlow sets and the NeuronMCT sets overlap.
"""

from __future__ import annotations

import numpy as np
import torch

from ..._state import preserved
from ...attribution import integrated_gradients
from ...config import DEFAULT_IG_STEPS
from ...progress import progress
from .common import (
    Checkpoint,
    Context,
    channels,
    class_accuracy,
    knockoff_statistics,
    layer_responses,
    save,
    seeded,
)


def _complement(chans, width: int) -> list[int]:
    keep = set(int(c) for c in chans)
    return [c for c in range(width) if c not in keep]


def _layers(ctx: Context) -> list[str]:
    return ctx.run.layer_names[1:]  # every layer below the class layer, the input layer last


def fidelity(ctx: Context) -> dict:
    o = ctx.opts
    ck = Checkpoint(ctx.run.dir, "fidelity", o.key("draws", "seed"), ctx.run.identity)
    widths = {n: channels(ctx, n) for n in _layers(ctx)}
    sets = {n: ctx.run.node_set(n) for n in _layers(ctx)}
    rows: list[dict] = []
    multi: list[dict] = []
    bar = progress(total=2 * len(sets), desc="fidelity", quiet=ctx.run.quiet, unit="layer")
    for mode in ("single", "multi"):
        for i, name in enumerate(_layers(ctx)):
            unit = f"{mode}:{name}"
            row = ck.get(unit)
            if row is None:
                scope = [name] if mode == "single" else _layers(ctx)[: i + 1]
                with seeded(ctx) as rng:  # each unit's draws from the seed: a resumed run draws the same
                    draws = [
                        {n: sorted(rng.choice(widths[n], len(sets[n]), replace=False).tolist()) for n in scope}
                        for _ in range(o.draws)
                    ]
                row = {
                    "layer": name,
                    "n_neurons": len(sets[name]),
                    "n_channels": widths[name],
                    "layers_intervened": scope,
                    "core_mask_accuracy": class_accuracy(ctx, {n: sets[n] for n in scope}),
                    "core_retain_accuracy": class_accuracy(ctx, {n: _complement(sets[n], widths[n]) for n in scope}),
                }
                rm = [class_accuracy(ctx, d) for d in draws]
                rr = [class_accuracy(ctx, {n: _complement(d[n], widths[n]) for n in scope}) for d in draws]
                row.update(
                    {
                        "random_mask_accuracy": float(np.mean(rm)),
                        "random_mask_std": float(np.std(rm)),
                        "random_retain_accuracy": float(np.mean(rr)),
                        "random_retain_std": float(np.std(rr)),
                        "draws": o.draws,
                    }
                )
                ck.put(unit, row)
            (rows if mode == "single" else multi).append(row)
            bar.update(1)
    bar.close()
    result = {
        "experiment": "fidelity (E1)",
        "target": ctx.run.target,
        "baseline_accuracy": class_accuracy(ctx),
        "n_class_images": int(ctx.run.class_images.shape[0]),
        "layers": rows,
        "multi_layer": multi,
        "options": o.key("draws", "seed"),
    }
    ck.done()
    return save(ctx.run.dir, "fidelity", result, _plot_fidelity)


def _plot_fidelity(plt, r, keys=("core", "random")):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, part, title in zip(axes, ("layers", "multi_layer"), ("single layer", "this layer and all above")):
        names = [row["layer"] for row in r[part]]
        x = np.arange(len(names))
        for _j, (what, style) in enumerate((("mask", "-"), ("retain", "--"))):
            for key, colour in zip(keys, ("#c62828", "#607d8b")):
                y = [row[f"{key}_{what}_accuracy"] for row in r[part]]
                err = [row.get(f"{key}_{what}_std", 0) for row in r[part]]
                ax.errorbar(x, y, yerr=err, fmt="o" + style, color=colour, label=f"{key} {what}", capsize=3)
        ax.set_xticks(x, names, rotation=20)
        ax.set_title(title)
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("class images still predicted as the class")
    axes[1].legend(fontsize=8)
    fig.suptitle(r["experiment"])
    return fig


def mct_ranking(ctx: Context, name: str, n_images: int, rng) -> np.ndarray:
    """NeuronMCT: channels of ``name`` ranked by mean |IG| of the class logit over class images."""
    top = ctx.run.layer_names[0]
    idx = np.arange(ctx.run.class_images.shape[0])
    if n_images and len(idx) > n_images:
        idx = np.sort(rng.choice(idx, n_images, replace=False))
    cfg = ctx.run.config
    prefix, segment = ctx.run.graph.cut(name, top, cfg.norm_rule)
    total: np.ndarray | None = None
    steps = cfg.ig_steps if isinstance(cfg.ig_steps, int) else DEFAULT_IG_STEPS  # MCT's own rule: fixed steps
    with preserved(ctx.run.model, freeze=True):
        for start in range(0, len(idx), cfg.batch_size):
            x = ctx.run.class_images[torch.from_numpy(idx[start : start + cfg.batch_size])].to(cfg.device)
            with torch.no_grad():
                acts, *extras = prefix(x)
            res = integrated_gradients(segment, acts, extras, [[ctx.run.target]] * len(x), steps, cfg.batch_size)
            s = np.abs(np.concatenate(res.scores)).sum(axis=0)
            total = s if total is None else total + s
    assert total is not None, "a finished run has at least one class image (fit refuses a class without)"
    return np.argsort(-total / len(idx), kind="stable")


def mct(ctx: Context) -> dict:
    o = ctx.opts
    ck = Checkpoint(ctx.run.dir, "mct", o.key("max_images", "seed"), ctx.run.identity)
    rows = []
    bar = progress(total=len(_layers(ctx)), desc="mct", quiet=ctx.run.quiet, unit="layer")
    for name in _layers(ctx):
        bar.update(1)
        row = ck.get(name)
        if row is None:
            core = ctx.run.node_set(name)
            width = channels(ctx, name)
            with seeded(ctx) as rng:  # each layer's image sample from the seed (as E10 draws it)
                ranking = mct_ranking(ctx, name, o.max_images, rng)
            chosen = sorted(int(c) for c in ranking[: len(core)])
            row = {
                "layer": name,
                "n_neurons": len(core),
                "n_channels": width,
                "core_mask_accuracy": class_accuracy(ctx, {name: core}),
                "core_retain_accuracy": class_accuracy(ctx, {name: _complement(core, width)}),
                "mct_mask_accuracy": class_accuracy(ctx, {name: chosen}),
                "mct_retain_accuracy": class_accuracy(ctx, {name: _complement(chosen, width)}),
                "mct_neurons": chosen,
                "core_neurons": core,
            }
            ck.put(name, row)
        rows.append(row)
    bar.close()
    result = {
        "experiment": "NeuronMCT (E2)",
        "target": ctx.run.target,
        "layers": rows,
        "options": o.key("max_images", "seed"),
    }
    ck.done()
    return save(
        ctx.run.dir,
        "mct",
        result,
        lambda plt, r: _plot_fidelity(plt, {**r, "multi_layer": r["layers"]}, keys=("core", "mct")),
    )


def overlap(ctx: Context) -> dict:
    o = ctx.opts
    rows: list[dict] = []
    notes: list[str] = []
    idx = np.arange(ctx.run.class_images.shape[0])
    if o.max_images and len(idx) > o.max_images:
        idx = np.sort(np.random.RandomState(o.seed).choice(idx, o.max_images, replace=False))
    sample = ctx.run.class_images[torch.from_numpy(idx)]
    logit = layer_responses(ctx, ctx.run.layer_names[0], sample)[:, ctx.run.target]
    bar = progress(total=len(_layers(ctx)), desc="overlap", quiet=ctx.run.quiet, unit="layer")
    for name in _layers(ctx):
        bar.update(1)
        core = set(ctx.run.node_set(name))
        with seeded(ctx) as rng:  # the image sample E2 draws for this layer
            ranking = mct_ranking(ctx, name, o.max_images, rng)
        chosen = set(int(c) for c in ranking[: len(core)])
        inter = len(core & chosen)
        row = {
            "layer": name,
            "n_neurons": len(core),
            "n_channels": channels(ctx, name),
            "neurflow_mct_overlap": inter / len(core) if core else 0.0,
            "neurflow_mct_jaccard": inter / len(core | chosen) if core else 0.0,
            "chance_overlap": len(core) / channels(ctx, name),
        }
        try:  # knockoffs: the layer's responses to class images as features, the class logit as target
            w = knockoff_statistics(layer_responses(ctx, name, sample), logit, o.seed)
            knock = set(int(c) for c in np.argsort(-w, kind="stable")[: len(core)])
            row["neurflow_knockoff_overlap"] = len(core & knock) / len(core) if core else 0.0
            row["mct_knockoff_overlap"] = len(chosen & knock) / len(core) if core else 0.0
        except ImportError:
            if not notes:
                notes.append("knockoffs skipped: knockpy is not installed (pip install knockpy)")
        rows.append(row)
    bar.close()
    result = {
        "experiment": "overlap of selection methods (E10)",
        "target": ctx.run.target,
        "layers": rows,
        "notes": notes,
        "options": o.key("max_images", "seed"),
    }

    return save(ctx.run.dir, "overlap", result, _plot_overlap)


def _plot_overlap(plt, r):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(r["layers"]))
    keys = [
        ("neurflow_mct_overlap", "NeurFlow vs NeuronMCT"),
        ("neurflow_knockoff_overlap", "NeurFlow vs knockoffs"),
        ("chance_overlap", "chance"),
    ]
    keys = [kv for kv in keys if kv[0] in r["layers"][0]]
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar(
            x - 0.4 + width * (j + 0.5),
            [row[key] for row in r["layers"]],
            width,
            label=label,
            color="#bbb" if key == "chance_overlap" else None,
        )
    ax.set_xticks(x, [row["layer"] for row in r["layers"]], rotation=20)
    ax.set_ylabel("share of the core set also selected")
    ax.legend(fontsize=8)
    ax.set_title(r["experiment"])
    return fig
