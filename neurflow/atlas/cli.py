"""``neurflow atlas``: the flags (every method flag of ``neurflow run``, generated from
``NeurFlowConfig``, plus the workers') and the command.  Torch-free at import: the parser is
built for every ``--help``."""

from __future__ import annotations

import sys

HELP = "every class of a model, one circuit each, on Ray workers; DIR/atlas.json and DIR/index.html"


def add_parser(sub, add_flags, models_help: str, data_help: str) -> None:
    from ..config import NeurFlowConfig
    from ..options import TRANSFORMS

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
    p.add_argument(
        "--targets", default="all", help="all (default), or comma-separated class indices or names, e.g. 3,5,Bag"
    )
    p.add_argument("--layers", help="comma-separated layer names, top down: class layer first, lowest input layer last")
    p.add_argument("--out", default=None, metavar="DIR", help="default: runs/atlas-fashion-cnn for the demo")
    p.add_argument("--overwrite", action="store_true", help="replace different runs in the class directories")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray workers, each computing one class at a time (default: the CPUs over --threads-per-worker); "
        "0: serially in this process, without Ray",
    )
    p.add_argument(
        "--threads-per-worker", type=int, default=None, help="torch threads of each worker (default: 1; serial: all)"
    )
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker reserves (default: 0)")
    p.add_argument(
        "--ray-address",
        default=None,
        help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local one)",
    )
    add_flags(p, NeurFlowConfig, skip=("threads",))


def cmd_atlas(args) -> int:
    import dataclasses

    from ..config import NeurFlowConfig
    from ..errors import NeurFlowError
    from .driver import run_atlas
    from .plan import Plan, demo_plan, parse_targets

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
        cfg = NeurFlowConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(NeurFlowConfig) if f.name != "threads"}
        )
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
    print(summary(atlas, plan.out))
    for f in atlas["failed"]:  # one line per failed class, once, at the end
        print(f"neurflow: error: class {f['target']} ({f['name']}): {f['error']}", file=sys.stderr)
    return 2 if atlas["failed"] else 0


def summary(atlas: dict, out) -> str:
    n, seconds = len(atlas["classes"]), atlas.get("seconds", 0)
    lines = [f"atlas of {n} classes in {seconds:.1f} s: {out}/atlas.json, {out}/index.html"]
    cc = atlas.get("confusion_correlation") or {}
    if cc.get("spearman") is not None:
        lines.append(
            f"circuit similarity vs confusion: Spearman {cc['spearman']:.3f} over {cc['pairs']} class pairs, "
            f"permutation p = {cc['p_value']:.4g}"
        )
    if atlas["failed"]:
        lines.append(f"{len(atlas['failed'])} class(es) failed (below); rerun the same command to retry them")
    return "\n".join(lines)
