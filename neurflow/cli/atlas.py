"""``neurflow atlas``: the flags (every method flag of ``neurflow run``, generated from
``NeurFlowConfig``, plus the atlas's own, from ``AtlasOptions``) and the command.  Torch-free at
import: the parser is built for every ``--help``."""

from __future__ import annotations

import dataclasses
import sys

from ..config import NeurFlowConfig
from ..errors import NeurFlowError
from ..options import TRANSFORMS, AtlasOptions
from .flags import add_flags, from_flags

HELP = "every class of a model, one circuit each, on Ray workers; DIR/atlas.json and DIR/index.html"


def add_atlas(sub, models_help: str, data_help: str) -> None:
    p = sub.add_parser(
        "atlas",
        help=HELP,
        description=HELP + ". Without --model and --data: every class of zoo:fashion-cnn with "
        "`neurflow demo`'s settings (docs/atlas.md).",
    )
    p.add_argument("--model", metavar="MODEL", default=None, help=models_help + " (default: the demo's)")
    p.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs pickle")
    p.add_argument("--data", metavar="DATA", default=None, help=data_help + " (default: the demo's)")
    p.add_argument("--transform", choices=TRANSFORMS, default=None, help="preset for image folders (default imagenet)")
    add_flags(p, AtlasOptions)
    add_flags(p, NeurFlowConfig, skip=("threads",))  # threads: --threads-per-worker


def cmd_atlas(args) -> int:
    from ..atlas.driver import run_atlas  # lazy: --help loads no torch
    from ..atlas.plan import Plan, demo_plan, parse_targets  # lazy: --help loads no torch

    from_flags(AtlasOptions, args)  # the options' own checks (finite numbers) before any work
    cfg = from_flags(NeurFlowConfig, args)  # the settings' checks, before the demo's are compared with them
    if args.model is None and args.data is None:
        runtime = {k: getattr(args, k) for k in ("device", "batch_size", "engine")}
        defaults = NeurFlowConfig()
        changed = [
            f.name
            for f in dataclasses.fields(NeurFlowConfig)
            if f.name not in ("device", "batch_size", "engine", "threads")
            and getattr(args, f.name, None) != getattr(defaults, f.name)
        ]
        if changed or args.layers:
            raise NeurFlowError(
                "model",
                "a model and data with method settings (the demo's settings are fixed)",
                None,
                "pass {p:model} and {p:data} to change " + ", ".join((["layers"] if args.layers else []) + changed),
            )
        plan = demo_plan(out=args.out, **{k: v for k, v in runtime.items() if v != getattr(defaults, k)})
        plan = dataclasses.replace(plan, targets=parse_targets(args.targets), overwrite=args.overwrite)
    else:
        if args.model is None or args.data is None:
            missing = "model" if args.model is None else "data"
            raise NeurFlowError(missing, f"a {missing} spec with {'--data' if missing == 'model' else '--model'}", None)
        if args.out is None:
            raise NeurFlowError("out", "an output directory for the atlas", None)
        layers = tuple(s.strip() for s in args.layers.split(",") if s.strip()) if args.layers else None
        plan = Plan(
            args.model,
            args.data,
            layers,
            cfg,
            parse_targets(args.targets),
            args.out,
            args.weights,
            args.trust_checkpoint,
            args.transform,
            overwrite=args.overwrite,
        )
    atlas = run_atlas(
        plan, args.workers, args.threads_per_worker, args.gpus_per_worker, args.ray_address, quiet=args.quiet
    )
    print(atlas_summary(atlas, plan.out))
    for f in atlas["failed"]:  # one line per failed class, once, at the end
        print(f"neurflow: error: class {f['target']} ({f['name']}): {f['error']}", file=sys.stderr)
    return 2 if atlas["failed"] else 0


def atlas_summary(atlas: dict, out) -> str:
    """The lines ``neurflow atlas`` prints: where the atlas is, the similarity-confusion correlation,
    how many classes failed."""
    from ..atlas.layout import AtlasDir  # lazy: --help loads no torch

    n, seconds = len(atlas["classes"]), atlas.get("seconds", 0)
    where = AtlasDir(out)
    lines = [f"atlas of {n} classes in {seconds:.1f} s: {where.atlas}, {where.index}"]
    cc = atlas.get("confusion_correlation") or {}
    if cc.get("spearman") is not None:
        lines.append(
            f"circuit similarity vs confusion: Spearman {cc['spearman']:.3f} over {cc['pairs']} class pairs, "
            f"permutation p = {cc['p_value']:.4g}"
        )
    if atlas["failed"]:
        lines.append(f"{len(atlas['failed'])} class(es) failed (below); rerun the same command to retry them")
    return "\n".join(lines)
