"""The ``neurflow`` command line: a thin layer over the library.

Flags are generated from the dataclasses that hold them (``NeurFlowConfig`` for ``run``,
``Reopen`` for the commands that reopen a run, ``evaluate.Options`` for ``eval``): field
``top_k`` <-> flag ``--top-k``, help and default from the field.  Choices come from the
registries (labelers and their options, experiments, model and data schemes).  Library errors
name Python parameters; ``main`` prints them with this command's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

# OpenMP threads that spin while they wait make a busy machine crawl: beside one other CPU-bound
# process the demo ran 8x slower with the default (active) policy, 1.3x with this one
# (docs/performance.md).  Set before torch loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._version import __version__
from .errors import NeurFlowError

HINT_NAMES = {"directory": "DIR", "images": "--data", "labels": "--data", "experiment": "EXPERIMENT"}


# -- flags from dataclasses ---------------------------------------------------------------------
def _tuple_of(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(t) for t in str(text).split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def _show(default) -> str:
    if isinstance(default, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    return str(default)


def add_flags(p, cls, skip: typing.Collection[str] = (), only: typing.Collection[str] | None = None) -> None:
    """One flag per field of the dataclass ``cls`` (help, default, type and choices from the field)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, default = hints[f.name], f.default
        text = f.metadata.get("help", "")
        kw: dict = {"dest": f.name, "default": default}
        if kind is bool:
            p.add_argument(flag, action="store_true", dest=f.name, help=text)
            continue
        if isinstance(default, tuple):
            kw["type"] = _tuple_of(type(default[0]) if default else str)
        elif "parse" in f.metadata:
            kw["type"] = f.metadata["parse"]
        elif "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        else:
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            if base[0] in (int, float):
                kw["type"] = base[0]
        shown = "" if default is None or "default" in text else f" (default: {_show(default)})"
        p.add_argument(flag, help=text + shown, **kw)


def from_flags(cls, args: argparse.Namespace, **extra):
    """The dataclass ``cls`` built from its flags in ``args``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}, **extra)


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


# -- the parser -----------------------------------------------------------------------------------
def _schemes() -> tuple[str, str]:
    from .schemes import data_schemes, model_schemes  # torch-free: the parser must build in a blink

    models = "; ".join(model_schemes().values())
    data = "; ".join(data_schemes().values())
    return models, data


def build_parser() -> argparse.ArgumentParser:
    # every import here is torch-free (tests/test_start.py): `neurflow --help` starts in well under a second
    from .config import NeurFlowConfig
    from .demo import DEMOS
    from .labels import LABELERS
    from .options import EXPERIMENT_NAMES as EXPERIMENTS
    from .options import TRANSFORMS, Reopen
    from .options import EvalOptions as Options

    models_help, data_help = _schemes()
    ap = argparse.ArgumentParser(prog="neurflow", description="NeurFlow circuits for PyTorch image classifiers")
    ap.add_argument("--version", action="version", version=f"neurflow {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list the layer names a model offers")
    p.add_argument("model", metavar="MODEL", help=models_help)
    p.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")

    p = sub.add_parser("run", help="compute a circuit and save it to --out")
    p.add_argument("--model", required=True, metavar="MODEL", help=models_help)
    p.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs pickle")
    p.add_argument("--data", required=True, metavar="DATA", help=data_help)
    p.add_argument("--transform", choices=TRANSFORMS, default=None, help="preset for image folders (default imagenet)")
    p.add_argument("--target", required=True, help="class index, or a class name where the model declares them")
    p.add_argument("--layers", help="comma-separated layer names, top down: class layer first, lowest input layer last")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, NeurFlowConfig)

    p = sub.add_parser("demo", help="run the whole pipeline on an embedded model and real data (offline)")
    p.add_argument(
        "--model", default=next(iter(DEMOS)), help="the demo: " + " or ".join(DEMOS) + " (default: %(default)s)"
    )
    p.add_argument("--target", default=None, help="class name or index (default: the demo's)")
    p.add_argument("--out", default=None, metavar="DIR", help="default: runs/demo-MODEL-CLASS")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, NeurFlowConfig, only=("device", "threads", "batch_size", "engine"))

    p = sub.add_parser("show", help="text summary of a saved circuit")
    p.add_argument("directory", metavar="DIR")

    p = sub.add_parser("report", help="write DIR/report.html: a self-contained interactive view of a saved circuit")
    p.add_argument("directory", metavar="DIR")

    p = sub.add_parser("debug", help="debug one image through the circuit: group scores, crops, trace, verification")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--image", required=True, metavar="IMAGE", help="an image file, or an index into the run's data")
    p.add_argument("--layer", help="layer of the circuit to score (default: the highest below the class layer)")
    p.add_argument("--threshold", type=float, default=0.8, help="strong groups and triggering crops (default: 0.8)")
    p.add_argument(
        "--score",
        choices=("published", "clipped"),
        default="published",
        help="rank and threshold by the published (unbounded) or the clipped score (default: published)",
    )
    p.add_argument(
        "--representatives",
        default="5",
        metavar="N|all",
        help="score each group on its N members nearest the group centre, or all (default: 5, as published)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the text summary")
    add_flags(p, Reopen)

    p = sub.add_parser(
        "audit",
        help="rank the circuit's groups, sub-groups and neurons by how much zeroing them removes the model's false "
        "positives and keeps its true positives",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument(
        "--max-images",
        type=int,
        default=256,
        help="false positives and true positives each sampled to at most this many (default: 256)",
    )
    p.add_argument(
        "--layers", help="comma-separated layers of the circuit to audit (default: all below the class layer)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    p.add_argument(
        "--max-candidates",
        type=int,
        default=256,
        help="per layer, at most this many sub-clusters of the groups' Ward tree (sub-groups down to single neurons) "
        "audited besides the groups, biggest first (default: 256)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the ranked table")
    add_flags(p, Reopen)

    p = sub.add_parser("label", help="label the circuit's groups with a labeler (" + ", ".join(LABELERS) + ")")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--labeler", required=True, help="; ".join(f"{k}: {e.help}" for k, e in LABELERS.items()))
    p.add_argument(
        "--groups",
        choices=("traced", "all"),
        default=None,
        help="label the traced groups or every group (default: traced for vlm, all otherwise)",
    )
    p.add_argument("--layers", help="comma-separated layers to label (default: every layer below the class layer)")
    p.add_argument("--no-check", action="store_true", help="skip the caption check")
    p.add_argument("--no-relations", action="store_true", help="skip the relation captions (vlm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check's random crops (default: 0)")
    p.add_argument("--json", action="store_true", help="print the labels as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, entry in LABELERS.items():
        g = p.add_argument_group(name)
        try:
            defaults = entry.defaults()
        except Exception:  # noqa: BLE001 - a labeler that cannot load still gets its flags; it fails when used
            defaults = {}
        for opt, (kind, text) in entry.options.items():
            shown = f" (default: {defaults[opt]})" if defaults.get(opt) is not None else ""
            g.add_argument("--" + opt.replace("_", "-"), dest=opt, type=kind, default=None, help=text + shown)

    p = sub.add_parser("eval", help="the paper's experiments on a run: " + ", ".join([*EXPERIMENTS, "all"]))
    p.add_argument("directory", metavar="DIR")
    p.add_argument("experiment", metavar="EXPERIMENT", help=", ".join([*EXPERIMENTS, "all"]))
    p.add_argument("--json", action="store_true", help="print the JSON result(s)")
    add_flags(p, Options)
    add_flags(p, Reopen)

    from .atlas.cli import add_parser as add_atlas  # torch-free, like the rest of the parser

    add_atlas(sub, add_flags, models_help, data_help)
    return ap


# -- the commands ---------------------------------------------------------------------------------
def cmd_layers(args) -> int:
    from .layers import layer_names
    from .models import load_model

    loaded = load_model(args.model, args.weights)
    modules = dict(loaded.model.named_modules())
    for name in layer_names(loaded.model):
        print(f"{name}\t{type(modules[name]).__name__}")
    return 0


def cmd_run(args) -> int:
    from .config import NeurFlowConfig
    from .inputs import load_inputs, run_provenance
    from .pipeline import NeurFlow

    cfg = from_flags(NeurFlowConfig, args)
    loaded, data, layers = load_inputs(
        args.model, args.weights, args.trust_checkpoint, cfg.seed, _names(args.layers), args.data, args.transform
    )
    prov = run_provenance(loaded, args.weights, args.data, data)
    nf = NeurFlow(cfg).fit(
        loaded.model,
        data.images,
        args.target,
        layers,
        labels=data.labels,
        class_names=loaded.class_names or data.class_names,
        out=args.out,
        overwrite=args.overwrite,
        quiet=args.quiet,
        provenance=prov,
    )
    return _finish_run(nf.circuit_, args.out)


def _finish_run(circuit, out, note: str = "", seconds: float | None = None) -> int:
    from .artifact import RunDir
    from .report import write_report
    from .show import summary

    print(summary(circuit))
    if note:
        print(f"\nnote: {note}")
    if seconds is not None:
        print(f"\ndemo finished in {seconds:.1f} s; files in {out}/ (circuit.json, arrays.npz, crops/)")
        print(f"inspect it again with: neurflow show {out}")
    else:
        print(f"\nwritten: {RunDir(out).circuit}")
    print(f"report: {write_report(out)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    runtime = {k: getattr(args, k) for k in ("device", "threads", "batch_size", "engine")}
    nf, out, seconds, demo = run_demo(args.model, args.target, args.out, args.quiet, args.overwrite, **runtime)
    return _finish_run(nf.circuit_, out, demo.note, seconds)


def cmd_show(args) -> int:
    from .artifact import load
    from .show import summary

    print(summary(load(args.directory), args.directory))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(write_report(args.directory))
    return 0


def _emit(args, run, result: dict, text: str, written) -> None:
    """Print ``result`` as JSON (--json) or ``text``, then rewrite the run's report."""
    import json

    from .report import write_report

    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(text)
        print(f"\nwritten: {written}")
    report = write_report(run.dir.path)
    if not args.json:
        print(f"report: {report}")


def _reopen(args):
    from .run import Reopen, Run

    return Run(args.directory, from_flags(Reopen, args))


def _on_device(run):
    """The reopened model on the run's ``--device`` for the command, back where it was afterwards."""
    from .probe import on_device

    return on_device(run.model, run.config.device)


def cmd_debug(args) -> int:
    from .artifact import atomic_write, write_json
    from .debug import debug_image, image_name, image_png
    from .show import debug_summary

    run = _reopen(args)
    image, source = run.image(args.image)
    cfg = run.config
    with _on_device(run):
        result = debug_image(
            run.circuit,
            run.model,
            image,
            args.layer,
            args.threshold,
            args.score,
            run.class_names,
            cfg.batch_size,
            cfg.device,
            source=source,
            representatives=args.representatives,
        )
    name = image_name(args.image)
    result["image"]["name"] = name
    atomic_write(run.dir.debug_file(name, "png"), image_png(image))
    write_json(run.dir.debug_file(name), result)
    _emit(args, run, result, debug_summary(result), run.dir.debug_file(name))
    return 0


def _write_fp_thumbnails(run, result: dict) -> None:
    """DIR/audit-crops/: the thumbnails of the audit's false-positive exemplars (the report shows them)."""
    from .artifact import atomic_write
    from .audit_candidates import fp_thumbnails

    folder = run.dir.path / "audit-crops"
    if folder.is_dir():
        for old in folder.glob("fp-*.png"):
            old.unlink()
    for name, png in fp_thumbnails(run.data.images, result["groups"]).items():
        atomic_write(folder / name, png)


def cmd_audit(args) -> int:
    from .artifact import write_json
    from .auditing import audit
    from .show import audit_summary

    run = _reopen(args)
    cfg = run.config
    with _on_device(run):
        result = audit(
            run.circuit,
            run.model,
            run.data.images,
            run.data.labels,
            args.max_images,
            args.seed,
            _names(args.layers),
            cfg.batch_size,
            cfg.device,
            quiet=run.quiet,
            max_candidates=args.max_candidates,
        )
    result["data"] = run.data.spec or args.data
    _write_fp_thumbnails(run, result)
    write_json(run.dir.audit, result)
    _emit(args, run, result, audit_summary(result), run.dir.audit)
    return 0


def cmd_label(args) -> int:
    import json

    from .labels import LABELERS, get_labeler, label_run
    from .report import write_report
    from .run import Run
    from .show import labels_summary

    run = Run(args.directory, quiet=args.quiet)  # a clear error for a wrong DIR before contacting anything
    entry = LABELERS.get(args.labeler)
    options = {k: getattr(args, k) for k in (entry.options if entry else ()) if getattr(args, k) is not None}
    labeler = get_labeler(args.labeler, **options)
    result = label_run(
        run, labeler, args.groups, _names(args.layers), not args.no_check, not args.no_relations, args.seed, args.quiet
    )
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(labels_summary(result))
    report = write_report(run.dir.path)
    if not args.json:
        print(f"\nlabels written to {run.dir.circuit}; report: {report}")
    return 0


def cmd_eval(args) -> int:
    import json

    from .evaluate import Options, run_eval
    from .report import write_report
    from .show import eval_summary

    opts = from_flags(Options, args)
    run = _reopen(args)
    with _on_device(run):
        results = run_eval(run, args.experiment, opts)
    if args.json:
        print(json.dumps(results[args.experiment] if len(results) == 1 else results, indent=1))
    else:
        for name, res in results.items():
            print(eval_summary(name, res))
    report = write_report(run.dir.path)
    if not args.json:
        print(f"\nwritten: {run.dir.eval}/; report: {report}")
    return 0


def cmd_atlas(args) -> int:
    from .atlas.cli import cmd_atlas as atlas

    return atlas(args)


COMMANDS = {
    "layers": cmd_layers,
    "run": cmd_run,
    "demo": cmd_demo,
    "show": cmd_show,
    "report": cmd_report,
    "debug": cmd_debug,
    "audit": cmd_audit,
    "label": cmd_label,
    "eval": cmd_eval,
    "atlas": cmd_atlas,
}


def flag_namer(parser: argparse.ArgumentParser, command: str):
    """Python parameter name -> how the command ``command`` spells it (``top_k`` -> ``--top-k``)."""
    spelled = dict(HINT_NAMES)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.option_strings:
            spelled[action.dest] = max(action.option_strings, key=len)
        elif action.metavar:
            spelled[action.dest] = str(action.metavar)
    return lambda name: spelled.get(name, name)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .progress import log_stream  # light: tqdm loads with the first bar

    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="neurflow: %(message)s",
        stream=log_stream(),  # a log line never starts after a progress bar's carriage return
    )
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away (`neurflow show DIR | head -1`) shows here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except NeurFlowError as exc:
        _end_progress_line()
        print(f"neurflow: error: {exc.render(flag_namer(parser, args.command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress_line()
        print("neurflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _end_progress_line() -> None:
    """Errors start on their own line, not after a progress bar's carriage return."""
    from .progress import end_line

    end_line()


def _stdout_gone() -> int:
    """stdout's reader closed the pipe: exit quietly as ``git log | head`` does (141 = 128 + SIGPIPE).
    stdout goes to /dev/null so that Python's flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
