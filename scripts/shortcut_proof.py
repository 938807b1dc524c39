#!/usr/bin/env python
"""The planted-shortcut proof of docs/debugging.md: circuit + audit for *Bag* on
``zoo:fashion-mnist-marked`` with ``zoo:fashion-cnn-shortcut`` and with ``zoo:fashion-cnn``.

    .venv/bin/python scripts/shortcut_proof.py [--out runs/shortcut-proof]

Prints the figures as JSON, writes them to docs/shortcut-proof.json and draws
docs/debugging-audit.png (audit scores of both models; the top group's exemplar crops).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from neurflow.artifact import RunDir, atomic_write  # noqa: E402
from neurflow.shortcut_proof import audit_proof  # noqa: E402


def figure(results: dict, dirs: dict, path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig = plt.figure(figsize=(12, 4.2))
    ax = fig.add_axes([0.06, 0.14, 0.44, 0.74])
    for k, (name, r) in enumerate(results.items()):
        scores = [g["score"] for g in r["audit"]["groups"]]
        ax.plot(range(1, len(scores) + 1), scores, "o-", label=name, color=("#c62828", "#1565c0")[k])
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel("audit rank")
    ax.set_ylabel("score = FP logit drop - TP logit drop")
    ax.set_title("Audit of class Bag on zoo:fashion-mnist-marked")
    ax.legend()
    for row, name in enumerate(results):
        top = results[name]["top"]
        for i, crop in enumerate(top["exemplars"][:6]):
            a = fig.add_axes([0.55 + 0.072 * i, 0.5 - 0.42 * row, 0.066, 0.3])
            with Image.open(RunDir(dirs[name]).crop(crop)) as im:
                a.imshow(im.convert("RGB"), interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(
                    f"{name}: top group {top['layer']} G{top['group']} "
                    f"(mark in {top['mark_share']:.0%} of its exemplars)",
                    loc="left",
                    fontsize=9,
                )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "shortcut-proof"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    results, dirs = {}, {}
    for name in ("fashion-cnn-shortcut", "fashion-cnn"):
        t0 = time.perf_counter()
        dirs[f"zoo:{name}"] = os.path.join(args.out, name)
        r = audit_proof(name, dirs[f"zoo:{name}"], quiet=args.quiet)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        for g in r["audit"]["groups"]:
            g.pop("exemplars_all", None)
        r["audit"].pop("false_positive_indices")
        r["audit"].pop("true_positive_indices")
        results[f"zoo:{name}"] = r
    summary = {
        name: {
            "top": {
                k: r["top"][k]
                for k in (
                    "layer",
                    "group",
                    "neurons",
                    "fp_logit_drop",
                    "tp_logit_drop",
                    "score",
                    "fp_fixed",
                    "tp_kept",
                    "mark_share",
                )
            },
            "second_score": r["audit"]["groups"][1]["score"] if len(r["audit"]["groups"]) > 1 else None,
            "before": r["before"],
            "after": r["after"],
            "seconds": r["seconds"],
            "false_positives": r["audit"]["false_positives"],
            "true_positives": r["audit"]["true_positives"],
        }
        for name, r in results.items()
    }
    print(json.dumps(summary, indent=1))
    atomic_write(
        os.path.join(ROOT, "docs", "shortcut-proof.json"),
        (json.dumps({"summary": summary, "full": results}, indent=1) + "\n").encode(),
    )
    figure(results, dirs, os.path.join(ROOT, "docs", "debugging-audit.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
