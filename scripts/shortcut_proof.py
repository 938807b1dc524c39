#!/usr/bin/env python
"""The planted-shortcut proofs of docs/debugging.md: circuit + audit of the planted class on its
marked test split, for ``zoo:fashion-cnn-shortcut`` (and ``zoo:fashion-cnn``, the control) on
``zoo:fashion-mnist-marked``, and for ``zoo:fashion-cnn-entangled`` on ``zoo:fashion-mnist-entangled``.

    .venv/bin/python scripts/shortcut_proof.py [--out runs/shortcut-proof] [--only shortcut|entangled]

Prints the figures as JSON, writes them to docs/shortcut-proof.json and draws
docs/debugging-audit.png and docs/debugging-entangled.png (the audit's ranking beside the earlier
group-only one; the top candidates' false-positive exemplars and the old top group's exemplars).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurflow.analysis.shortcut_proof import PLANTS, audit_proof  # noqa: E402
from neurflow.store import RunDir, atomic_write  # noqa: E402

RUNS = {
    "shortcut": (("fashion-cnn-shortcut", "shortcut"), ("fashion-cnn", "shortcut")),
    "entangled": (("fashion-cnn-entangled", "entangled"),),
}
FIGURES = {"shortcut": "debugging-audit.png", "entangled": "debugging-entangled.png"}
ROW_KEYS = ("layer", "kind", "group", "neurons", "score", "logit_score", "fp_logit_drop", "tp_logit_drop")
ROW_KEYS += ("fp_fixed", "tp_kept", "mark_share", "fp_mark_share", "joint_fp_fixed", "joint_tp_kept")


def brief(row: dict) -> dict:
    return {k: row[k] for k in ROW_KEYS if k in row}


def figure(proof: str, results: dict, dirs: dict, path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from neurflow.sources.datasets import load_data

    fig = plt.figure(figsize=(13, 2.4 + 2.2 * len(results)))
    ax = fig.add_axes([0.06, 0.14, 0.36, 0.74])
    for k, (name, r) in enumerate(results.items()):
        color = ("#c62828", "#1565c0", "#2e7d32")[k % 3]
        rows = r["audit"]["groups"]
        ax.plot(range(1, len(rows) + 1), [g["score"] for g in rows], "-", color=color, label=f"{name}: score")
        fixed = [g["fp_fixed"] for g in rows]
        ax.plot(range(1, len(rows) + 1), fixed, ":", color=color, lw=0.8, label=f"{name}: fp fixed")
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("audit rank (groups, sub-groups, neurons)")
    ax.set_ylabel("score (margin share) / fp fixed")
    ax.set_title(f"Audit of class {next(iter(results.values()))['audit']['target_name']}", fontsize=10)
    ax.legend(fontsize=7)
    n = len(results)
    for row, (name, r) in enumerate(results.items()):
        data = load_data(r["data"])
        top, old = r["top"], r["old_top"]
        y = 0.88 - (row + 1) * 0.8 / n
        h = 0.8 / n * 0.36
        for i, e in enumerate(top.get("fp_exemplars", [])[:5]):
            a = fig.add_axes([0.47 + 0.052 * i, y + h * 1.25, 0.048, h])
            t, l, hh, w = e["box"]
            a.imshow(data.images[e["index"], 0, t : t + hh, l : l + w].numpy(), cmap="gray", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(
                    f"{name} new top: {top['layer']} {top['kind']} G{top['group']} {top['neurons'][:4]} "
                    f"(false-positive crops, mark in {top.get('fp_mark_share', 0):.0%})",
                    loc="left",
                    fontsize=8,
                )
        for i, crop in enumerate(old["exemplars"][:5]):
            a = fig.add_axes([0.47 + 0.052 * i, y, 0.048, h])
            with Image.open(RunDir(dirs[name]).crop(crop)) as im:
                a.imshow(im.convert("RGB"), interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(
                    f"old top: {old['layer']} G{old['group']} ({len(old['neurons'])} neurons; "
                    f"exemplars, mark in {old.get('mark_share', 0):.0%})",
                    loc="left",
                    fontsize=8,
                )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write(path, buf.getvalue())


def summarise(r: dict) -> dict:
    rows = r["audit"]["groups"]
    return {
        "data": r["data"],
        "top": brief(r["top"]),
        "old_top": brief(r["old_top"]),
        "best5": [brief(g) for g in rows[:5]],
        "second_score": rows[1]["score"] if len(rows) > 1 else None,
        "old_second_logit_score": r["old_second_logit_score"],
        "candidates": r["audit"]["candidates"],
        "before": r["before"],
        "after": r["after"],
        "old_after": r["old_after"],
        "seconds": r["seconds"],
        "false_positives": r["audit"]["false_positives"],
        "true_positives": r["audit"]["true_positives"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "shortcut-proof"))
    ap.add_argument("--only", choices=tuple(RUNS), help="make one proof only (the record keeps the other's)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    record_path = os.path.join(ROOT, "docs", "shortcut-proof.json")
    try:
        with open(record_path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    summary, full = dict(record.get("summary", {})), dict(record.get("full", {}))
    for proof, runs in RUNS.items():
        if args.only and proof != args.only:
            continue
        results, dirs = {}, {}
        for name, plant in runs:
            t0 = time.perf_counter()
            dirs[f"zoo:{name}"] = os.path.join(args.out, name)
            r = audit_proof(name, dirs[f"zoo:{name}"], quiet=args.quiet, plant=PLANTS[plant])
            r["seconds"] = round(time.perf_counter() - t0, 1)
            results[f"zoo:{name}"] = r
        figure(proof, results, dirs, os.path.join(ROOT, "docs", FIGURES[proof]))
        for name, r in results.items():
            summary[name] = summarise(r)
            audit = dict(r["audit"])
            audit["groups"] = audit["groups"][:20]  # the record keeps the best rows; the run keeps them all
            audit.pop("false_positive_indices")
            audit.pop("true_positive_indices")
            full[name] = {**{k: v for k, v in r.items() if k != "audit"}, "audit": audit}
    print(json.dumps(summary, indent=1))
    atomic_write(record_path, (json.dumps({"summary": summary, "full": full}, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
