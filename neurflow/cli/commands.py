"""The ``neurflow`` command line: a thin layer over the library.

Flags are generated from the dataclasses that hold them (``NeurFlowConfig`` for ``run``,
``Reopen`` for the commands that reopen a run, ``options.EvalOptions`` for ``eval``): field
``top_k`` <-> flag ``--top-k``, help and default from the field.  Choices come from the
registries (labelers and their options, experiments, model and data schemes).  Library errors
name Python parameters; ``main`` prints them with this command's flags.
"""

from __future__ import annotations

import json
import os

from ..config import NeurFlowConfig
from ..options import AuditOptions, DebugOptions, LabelOptions
from .atlas import cmd_atlas
from .flags import from_flags, split_names

# OpenMP threads that spin while they wait make a busy machine crawl: beside one other CPU-bound
# process the demo ran 8x slower with the default (active) policy, 1.3x with this one
# (docs/performance.md).  Set before torch loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- the commands ---------------------------------------------------------------------------------
def cmd_layers(args) -> int:
    from ..slicing import layer_names  # lazy: --help loads no torch
    from ..sources.models import load_model  # lazy: --help loads no torch

    loaded = load_model(args.model, args.weights)
    modules = dict(loaded.model.named_modules())
    for name in layer_names(loaded.model):
        print(f"{name}\t{type(modules[name]).__name__}")
    return 0


def cmd_run(args) -> int:
    from ..method import NeurFlow  # lazy: --help loads no torch
    from ..sources.inputs import load_inputs, run_provenance  # lazy: --help loads no torch

    cfg = from_flags(NeurFlowConfig, args)
    loaded, data, layers = load_inputs(
        args.model, args.weights, args.trust_checkpoint, cfg.seed, split_names(args.layers), args.data, args.transform,
        args.image_column, args.label_column,
    )  # fmt: skip
    if args.plan:
        from .._state import running  # lazy: --help loads no torch
        from ..method.preview import describe, plan_run  # lazy: --help loads no torch

        names = loaded.class_names or data.class_names
        with running(loaded.model, cfg.device, cfg.threads, cfg.seed):
            plan = plan_run(cfg, loaded.model, data.images, data.labels, args.target, layers, names, args.quiet)
        print(describe(plan))
        return 0
    prov = run_provenance(loaded, args.weights, args.data, data)
    nf = NeurFlow(cfg).fit_loaded(
        loaded, data, args.target, layers, out=args.out, overwrite=args.overwrite, quiet=args.quiet, provenance=prov
    )
    return _finish_run(nf.circuit_, args.out)


def _finish_run(circuit, out, note: str = "", seconds: float | None = None) -> int:
    from ..analysis.report import write_report  # lazy: --help loads no torch
    from ..analysis.summary import summary  # lazy: --help loads no torch
    from ..store import RunDir  # lazy: --help loads no torch

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
    from ..demo import run_demo  # lazy: --help loads no torch

    runtime = {k: getattr(args, k) for k in ("device", "threads", "batch_size", "engine")}
    nf, out, seconds, demo = run_demo(args.model, args.target, args.out, args.quiet, args.overwrite, **runtime)
    return _finish_run(nf.circuit_, out, demo.note, seconds)


def cmd_show(args) -> int:
    from ..analysis.summary import summary  # lazy: --help loads no torch
    from ..store import load  # lazy: --help loads no torch

    print(summary(load(args.directory), args.directory))
    return 0


def cmd_report(args) -> int:
    from ..analysis.report import write_report  # lazy: --help loads no torch

    print(write_report(args.directory))
    return 0


def _emit(args, run, result: dict, text: str, written) -> None:
    """Print ``result`` as JSON (--json) or ``text``, then rewrite the run's report."""
    from ..analysis.report import write_report  # lazy: --help loads no torch

    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(text)
        print(f"\nwritten: {written}")
    report = write_report(run.dir.path)
    if not args.json:
        print(f"report: {report}")


def _reopen(args):
    from ..analysis.run import Reopen, Run  # lazy: --help loads no torch

    return Run(args.directory, from_flags(Reopen, args))


def _on_device(run):
    """The reopened model on the run's ``--device`` for the command, back where it was afterwards."""
    from .._state import on_device  # lazy: --help loads no torch

    return on_device(run.model, run.config.device)


def cmd_debug(args) -> int:
    from ..analysis.debug import debug_image, debug_name, image_origin, image_png  # lazy: --help loads no torch
    from ..analysis.summary import debug_summary  # lazy: --help loads no torch
    from ..store import atomic_write, write_json  # lazy: --help loads no torch

    from_flags(DebugOptions, args)  # the options' own checks (finite numbers, the seed's range) before any work
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
    with run.dir.updating():  # named and written under the lock: two debugs of one name do not collide
        name = debug_name(run.dir, args.image, source)
        result["image"].update(name=name, origin=image_origin(source))
        atomic_write(run.dir.debug_file(name, "png"), image_png(image))
        write_json(run.dir.debug_file(name), result)
    _emit(args, run, result, debug_summary(result), run.dir.debug_file(name))
    return 0


def _write_fp_thumbnails(run, result: dict) -> None:
    """DIR/audit-crops/: the thumbnails of the audit's false-positive exemplars (the report shows them)."""
    from ..analysis.candidates import fp_thumbnails  # lazy: --help loads no torch
    from ..store import atomic_write  # lazy: --help loads no torch

    folder = run.dir.audit_crops
    if folder.is_dir():
        for old in folder.glob("fp-*.png"):
            old.unlink()
    for name, png in fp_thumbnails(run.data.images, result["groups"]).items():
        atomic_write(run.dir.audit_crop(name), png)


def cmd_audit(args) -> int:
    from ..analysis.audit import audit  # lazy: --help loads no torch
    from ..analysis.summary import audit_summary  # lazy: --help loads no torch
    from ..store import write_json  # lazy: --help loads no torch

    from_flags(AuditOptions, args)  # the options' own checks (finite numbers, the seed's range) before any work
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
            split_names(args.layers),
            cfg.batch_size,
            cfg.device,
            quiet=run.quiet,
            max_candidates=args.max_candidates,
            predictions=run.predictions if run.data.images.cache_key() else None,  # a folder: its cached pass
        )
    result["data"] = run.data.spec or args.data
    with run.dir.updating():
        _write_fp_thumbnails(run, result)
        write_json(run.dir.audit, result)
    _emit(args, run, result, audit_summary(result), run.dir.audit)
    return 0


def cmd_label(args) -> int:
    from ..analysis.labels import LABELERS, get_labeler, label_run  # lazy: --help loads no torch
    from ..analysis.report import write_report  # lazy: --help loads no torch
    from ..analysis.run import Run  # lazy: --help loads no torch
    from ..analysis.summary import labels_summary  # lazy: --help loads no torch

    from_flags(LabelOptions, args)  # the options' own checks (finite numbers, the seed's range) before any work
    # a clear error for a wrong DIR before contacting anything
    run = Run(args.directory, quiet=args.quiet, trust_model_spec=args.trust_model_spec)
    entry = LABELERS.get(args.labeler)
    options = {k: getattr(args, k) for k in (entry.options if entry else ()) if getattr(args, k) is not None}
    labeler = get_labeler(args.labeler, **options)
    result = label_run(
        run,
        labeler,
        args.groups,
        split_names(args.layers),
        not args.no_check,
        not args.no_relations,
        args.seed,
        args.quiet,
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
    from ..analysis.evaluate import Options, run_eval  # lazy: --help loads no torch
    from ..analysis.report import write_report  # lazy: --help loads no torch
    from ..analysis.summary import eval_summary  # lazy: --help loads no torch

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
