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

    p = sub.add_parser("debug", help="debug one image through the circuit: group scores, crops, trace, verification")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--image", required=True, metavar="IMAGE", help="an image file, or an index into the run's data")
    p.add_argument("--layer", help="layer of the circuit to score (default: the highest below the class layer)")
    p.add_argument("--threshold", type=float, default=0.8, help="strong groups and triggering crops (default: 0.8)")
    p.add_argument("--score", choices=("published", "clipped"), default="published",
                   help="rank and threshold by the published (unbounded) or the clipped score (default: published)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the text summary")
    _add_reopen_flags(p)

    p = sub.add_parser("audit", help="rank the circuit's groups by how much the model's false positives lean on them")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--data", metavar="DATA", help="labelled data to audit (default: the run's data)")
    p.add_argument("--max-images", type=int, default=256,
                   help="false positives and true positives each sampled to at most this many (default: 256)")
    p.add_argument("--layers", help="comma-separated layers of the circuit to audit (default: all below the class layer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the ranked table")
    _add_reopen_flags(p, data=False)

    p = sub.add_parser("label", help="label the circuit's groups with a labeler (vlm, annotations, clip)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--labeler", required=True, help="vlm, annotations or clip")
    p.add_argument("--groups", choices=("traced", "all"), default=None,
                   help="label the traced groups or every group (default: traced for vlm, all otherwise)")
    p.add_argument("--layers", help="comma-separated layers to label (default: every layer below the class layer)")
    p.add_argument("--no-check", action="store_true", help="skip the caption check")
    p.add_argument("--no-relations", action="store_true", help="skip the relation captions (vlm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check's random crops (default: 0)")
    p.add_argument("--json", action="store_true", help="print the labels as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("vlm")
    g.add_argument("--base-url", help="OpenAI-compatible API base, e.g. https://api.openai.com/v1, http://localhost:11434/v1")
    g.add_argument("--model", help="the multimodal chat model, e.g. gpt-4o")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (default: OPENAI_API_KEY)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: 60)")
    g.add_argument("--retries", type=int, default=3, help="retries after a failed request (default: 3)")
    g.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time (default: 1)")
    g.add_argument("--cache-dir", help="answer cache (default: $XDG_CACHE_HOME/neurflow/vlm)")
    g = p.add_argument_group("annotations")
    g.add_argument("--annotations", help="CSV or JSON of image tags (optionally boxes), or 'zoo' for zoo data")
    g = p.add_argument_group("clip")
    g.add_argument("--clip-model", help="open_clip architecture (default: ViT-B-32)")
    g.add_argument("--clip-weights", help="local CLIP weights: checkpoint file (open_clip) or model folder (transformers)")
    g.add_argument("--words", help="word list, one per line (default: a built-in list of visual words)")

    p = sub.add_parser("eval", help="the paper's experiments on a run: fidelity, mct, edge-correlation, methods, "
                                    "aggregation, optimality, k, crop-sizes, overlap, weight-norm, all")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("experiment", metavar="EXPERIMENT")
    p.add_argument("--json", action="store_true", help="print the JSON result(s)")
    from .evaluate.common import Options
    d = Options()
    p.add_argument("--draws", type=int, default=d.draws, help=f"random baselines per setting, E1 (default: {d.draws})")
    p.add_argument("--subsets", type=int, default=d.subsets, help=f"random channel subsets per size, E3-E5 (default: {d.subsets})")
    p.add_argument("--sizes", default=",".join(map(str, d.sizes)), help="subset sizes, E3-E5 (default: %(default)s)")
    p.add_argument("--random-sets", type=int, default=d.random_sets, help=f"random sets against the core set, E6 (default: {d.random_sets})")
    p.add_argument("--nodes", type=int, default=d.nodes, help=f"nodes per layer below the class layer, E3/E5/E6/E11 (default: {d.nodes})")
    p.add_argument("--max-crops", type=int, default=d.max_crops,
                   help=f"crops drawn from the pool for top-k overlaps, 0 = all (default: {d.max_crops})")
    p.add_argument("--max-images", type=int, default=d.max_images, help=f"class images for NeuronMCT's IG, E2/E10 (default: {d.max_images})")
    p.add_argument("--ks", default=",".join(map(str, d.ks)), help="values of k, E8 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw (default: %(default)s)")
    _add_reopen_flags(p)
    return ap


LABELER_OPTIONS = {"vlm": ("base_url", "model", "api_key_env", "timeout", "retries", "backoff", "cache_dir"),
                   "annotations": ("annotations",), "clip": ("clip_model", "clip_weights", "words")}


def cmd_label(args) -> int:
    import json

    from .labels import get_labeler, label_run
    from .report import write_report
    from .show import labels_summary

    from .artifact import load
    load(args.dir)  # a clear error for a wrong DIR before contacting anything
    options = {k: getattr(args, k) for k in LABELER_OPTIONS.get(args.labeler, ())}
    labeler = get_labeler(args.labeler, **options)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    result = label_run(args.dir, labeler, args.groups, layers, not args.no_check, not args.no_relations,
                       args.seed, args.quiet)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(labels_summary(result))
    report = write_report(args.dir)
    if not args.json:
        print(f"\nlabels written to {args.dir}/circuit.json; report: {report}")
    return 0


def _add_reopen_flags(p: argparse.ArgumentParser, data: bool = True) -> None:
    """Flags of the commands that reopen a run with its model (and data)."""
    p.add_argument("--model", metavar="MODEL", help="override the run's recorded model spec")
    p.add_argument("--weights", help="override the run's weights file (loaded with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs pickle")
    if data:
        p.add_argument("--data", metavar="DATA", help="override the run's data (for --image INDEX)")
    p.add_argument("--transform", choices=("imagenet", "none"), default=None, help="override the run's transform")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


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
    meta = {"model": loaded.spec, "weights": args.weights, "data": args.data, "transform": args.transform,
            "data_skipped": data.skipped,
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


def _emit(args, run_dir, result: dict, text: str, written) -> None:
    """Print ``result`` as JSON (--json) or ``text``, then rewrite the run's report."""
    import json

    from .report import write_report
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(text)
        print(f"\nwritten: {written}")
    report = write_report(run_dir)
    if not args.json:
        print(f"report: {report}")


def cmd_debug(args) -> int:
    from .artifact import atomic_write, write_json
    from .debug import debug_image, image_name, image_png
    from .reopen import image_from_data, read_image, reopen
    from .show import debug_summary

    import os
    by_index = str(args.image).lstrip("-").isdigit() and not os.path.isfile(args.image)
    run = reopen(args.dir, args.model, args.weights, args.data, args.transform, need_data=by_index,
                 trust_checkpoint=args.trust_checkpoint)
    if by_index:
        image = image_from_data(args.image, run.data)
        i = int(args.image)
        label = int(run.data.labels[i]) if run.data.labels is not None else None
        names = run.class_names or run.data.class_names or []
        source = {"source": f"{run.data.spec or 'data'}[{i}]", "index": i, "label": label,
                  "label_name": names[label] if label is not None and label < len(names) else None,
                  "file": run.data.files[i] if run.data.files else None}
    else:
        image = read_image(args.image, run.circuit)
        source = {"source": str(args.image), "index": None, "label": None, "label_name": None, "file": str(args.image)}
    result = debug_image(run.circuit, run.model, image, args.layer, args.threshold, args.score,
                         run.class_names, args.batch_size, args.device, source=source)
    name = image_name(args.image)
    result["image"]["name"] = name
    out = run.dir / "debug"
    atomic_write(out / f"{name}.png", image_png(image))
    write_json(out / f"{name}.json", result)
    _emit(args, run.dir, result, debug_summary(result), out / f"{name}.json")
    return 0


def cmd_audit(args) -> int:
    from .artifact import write_json
    from .audit import audit
    from .reopen import reopen
    from .show import audit_summary

    run = reopen(args.dir, args.model, args.weights, args.data, args.transform, need_data=True,
                 trust_checkpoint=args.trust_checkpoint)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    result = audit(run.circuit, run.model, run.data.images, run.data.labels, args.max_images, args.seed, layers,
                   args.batch_size, args.device, quiet=args.quiet)
    result["data"] = run.data.spec or args.data
    write_json(run.dir / "audit.json", result)
    _emit(args, run.dir, result, audit_summary(result), run.dir / "audit.json")
    return 0


def cmd_eval(args) -> int:
    import json

    from .evaluate import Options, run_eval
    from .reopen import reopen
    from .report import write_report

    def ints(text, flag):
        try:
            return tuple(int(t) for t in str(text).split(",") if t.strip())
        except ValueError:
            raise NeurFlowError(flag, "comma-separated integers", text) from None
    for flag in ("draws", "subsets", "random_sets", "nodes", "max_images"):
        if getattr(args, flag) < 1:
            raise NeurFlowError("--" + flag.replace("_", "-"), "an integer >= 1", getattr(args, flag))
    opts = Options(draws=args.draws, subsets=args.subsets, sizes=ints(args.sizes, "--sizes"),
                   random_sets=args.random_sets, nodes=args.nodes, max_crops=args.max_crops,
                   max_images=args.max_images, ks=ints(args.ks, "--ks"), seed=args.seed,
                   batch_size=args.batch_size, device=args.device, quiet=args.quiet)
    run = reopen(args.dir, args.model, args.weights, args.data, args.transform, need_data=True,
                 trust_checkpoint=args.trust_checkpoint)
    results = run_eval(run, args.experiment, opts)
    if args.json:
        print(json.dumps(results[args.experiment] if len(results) == 1 else results, indent=1))
    else:
        from .show import eval_summary
        for name, res in results.items():
            print(eval_summary(name, res))
    report = write_report(args.dir)
    if not args.json:
        print(f"\nwritten: {args.dir}/eval/; report: {report}")
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
                "report": cmd_report, "debug": cmd_debug, "audit": cmd_audit,
                "label": cmd_label, "eval": cmd_eval}[args.command](args)
    except NeurFlowError as exc:
        print(f"neurflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
