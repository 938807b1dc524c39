"""The ``neurflow`` command line.  ``run``'s method flags are generated from
``NeurFlowConfig`` one to one (field ``top_k`` <-> flag ``--top-k``)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from . import __version__
from .config import EDGE_NORMS, GROUP_EDGE_RULES, SELECTIONS, NeurFlowConfig
from .errors import NeurFlowError

CHOICES = {"edge_norm": EDGE_NORMS, "group_edge_rule": GROUP_EDGE_RULES, "selection": SELECTIONS}
HELP = {
    "tau": "core neurons per node (the cap under --adaptive-eps)", "top_k": "exemplar crops per node",
    "ig_steps": "Gauss-Legendre steps of integrated gradients", "granularities": "crop sizes as fractions, e.g. 1,0.5,0.25",
    "stride_ratio": "crop stride as a fraction of the crop side", "adaptive_eps": "adaptive tau: the acceptable error range eps",
    "edge_norm": "edge weight normalisation (reference = the published in-place rule)",
    "max_sub_concepts": "most sub-concepts per node", "monosemantic_threshold": "allow one sub-concept when no split reaches this silhouette",
    "max_groups": "most groups per layer (silhouette search)", "n_groups": "fixed number of groups per layer",
    "group_edge_rule": "published: a lower weight counts once per sub-concept in the group; once: once per neuron",
    "top_n": "groups traced per layer", "selection": "class images: predicted or labelled as the target",
    "batch_size": "batch size (bounds peak memory)", "device": "cpu or cuda", "seed": "random seed",
}


def _floats(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(NeurFlowConfig)
    for f in dataclasses.fields(NeurFlowConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        kw: dict = {"dest": f.name, "default": f.default, "help": HELP.get(f.name, "") + f" (default: {f.default})"}
        if f.name == "granularities":
            kw["type"] = _floats
            kw["default"] = ",".join(f"{g:g}" for g in f.default)
            kw["help"] = HELP[f.name] + f" (default: {kw['default']})"
        elif f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        elif kind in (int, typing.Optional[int]):
            kw["type"] = int
        elif kind in (float, typing.Optional[float]):
            kw["type"] = float
        p.add_argument(flag, **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neurflow", description="NeurFlow circuits for PyTorch image classifiers")
    ap.add_argument("--version", action="version", version=f"neurflow {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list the layer names a model offers")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--weights", help="state dict file (loaded with weights_only=True)")

    p = sub.add_parser("run", help="compute a circuit and save it to --out")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="zoo:NAME, torchvision:NAME, package.module:factory or path/file.py:factory")
    p.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs pickle")
    p.add_argument("--data", required=True, metavar="DATA", help="image folder (ImageFolder or flat) or .pt file")
    p.add_argument("--transform", choices=("imagenet", "none"), default=None,
                   help="preset for image folders (default imagenet)")
    p.add_argument("--target", required=True, help="class index, or a class name where the model declares them")
    p.add_argument("--layers", help="comma-separated layer names, top down: class layer first, lowest input layer last")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(p)

    p = sub.add_parser("demo", help="run the whole pipeline on an embedded model and real data (offline)")
    p.add_argument("--model", default="fashion-cnn", help="fashion-cnn (default) or efficientnet-lite0")
    p.add_argument("--target", default=None, help="class name or index (default: Sneaker / espresso)")
    p.add_argument("--out", default=None, metavar="DIR", help="default: runs/demo-MODEL-CLASS")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("show", help="text summary of a saved circuit")
    p.add_argument("dir", metavar="DIR")

    p = sub.add_parser("report", help="write DIR/report.html: a self-contained interactive view of a saved circuit")
    p.add_argument("dir", metavar="DIR")
    return ap


def cmd_layers(args) -> int:
    from .layers import layer_names
    from .models import load_model
    loaded = load_model(args.model, args.weights)
    modules = dict(loaded.model.named_modules())
    for name in layer_names(loaded.model):
        print(f"{name}\t{type(modules[name]).__name__}")
    return 0


def cmd_run(args) -> int:
    from pathlib import Path

    from .datasets import load_data
    from .models import load_model
    from .pipeline import NeurFlow
    from .show import summary

    cfg_fields = {f.name for f in dataclasses.fields(NeurFlowConfig)}
    settings = {k: v for k, v in vars(args).items() if k in cfg_fields}
    if isinstance(settings["granularities"], str):
        settings["granularities"] = _floats(settings["granularities"])
    cfg = NeurFlowConfig(**settings)
    loaded = load_model(args.model, args.weights, args.trust_checkpoint, seed=cfg.seed)
    if args.layers:
        layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    elif loaded.default_layers:
        layers = loaded.default_layers
    else:
        raise NeurFlowError("--layers", "comma-separated layer names, class layer first", None,
                            f"run `neurflow layers {args.model}` to list them")
    data = load_data(args.data, args.transform)
    meta = {"model": loaded.spec, "weights": args.weights, "data": args.data, "data_skipped": data.skipped,
            "files": data.files}
    nf = NeurFlow(cfg).fit(loaded.model, data.images, args.target, layers, labels=data.labels,
                           class_names=loaded.class_names or data.class_names, out=args.out,
                           overwrite=args.overwrite, quiet=args.quiet, meta=meta)
    print(summary(nf.circuit_))
    print(f"\nwritten: {Path(args.out) / 'circuit.json'}")
    from .report import write_report
    print(f"report: {write_report(args.out)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .show import summary
    nf, out, seconds, demo = run_demo(args.model, args.target, args.out, args.quiet, args.overwrite)
    print(summary(nf.circuit_))
    if demo.note:
        print(f"\nnote: {demo.note}")
    print(f"\ndemo finished in {seconds:.1f} s; files in {out}/ (circuit.json, arrays.npz, crops/)")
    print(f"inspect it again with: neurflow show {out}")
    from .report import write_report
    print(f"report: {write_report(out)}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    print(write_report(args.dir))
    return 0


def cmd_show(args) -> int:
    from .artifact import load
    from .show import summary
    print(summary(load(args.dir)))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="neurflow: %(message)s")
    try:
        return {"layers": cmd_layers, "run": cmd_run, "demo": cmd_demo, "show": cmd_show,
                "report": cmd_report}[args.command](args)
    except NeurFlowError as exc:
        print(f"neurflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
