"""The ``neurflow`` parser: one ``add_<command>`` per command.  Torch-free: it is built for every
``--help`` (tests/test_start.py).
"""

from __future__ import annotations

import argparse
from typing import Any

from .._version import __version__
from ..analysis.labels import LABELERS
from ..config import NeurFlowConfig
from ..demo import DEMOS
from ..options import EXPERIMENT_NAMES as EXPERIMENTS
from ..options import TRANSFORMS, AuditOptions, DebugOptions, LabelOptions, Reopen
from ..options import EvalOptions as Options
from ..sources.schemes import data_schemes, model_schemes
from .atlas import add_atlas
from .flags import add_flags


def _schemes() -> tuple[str, str]:
    models = "; ".join(model_schemes().values())
    data = "; ".join(data_schemes().values())
    return models, data


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that records how each of its arguments is spelled as it is added:
    ``spelled`` maps dest -> the longest option string (``top_k`` -> ``--top-k``), or the metavar
    of a positional.  The root parser's ``commands`` holds each command's parser (``main`` names
    a library error's parameters with them).  An argument added to a group is recorded with
    ``record``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.spelled: dict[str, str] = {}  # before ArgumentParser adds --help
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self.record(super().add_argument(*args, **kwargs))

    def record(self, action: argparse.Action) -> argparse.Action:
        if action.option_strings:
            self.spelled[action.dest] = max(action.option_strings, key=len)
        elif action.metavar:
            self.spelled[action.dest] = str(action.metavar)
        return action


def build_parser() -> Parser:
    # every import here is torch-free (tests/test_start.py): `neurflow --help` starts in well under a second
    models_help, data_help = _schemes()
    ap = Parser(prog="neurflow", description="NeurFlow circuits for PyTorch image classifiers")
    ap.add_argument("--version", action="version", version=f"neurflow {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)  # its parsers are Parsers too
    add_layers(sub, models_help)
    add_run(sub, models_help, data_help)
    add_demo(sub)
    add_show(sub)
    add_report(sub)
    add_debug(sub)
    add_audit(sub)
    add_label(sub)
    add_eval(sub)
    add_atlas(sub, models_help, data_help)
    ap.commands = dict(sub.choices)
    return ap


def add_layers(sub, models_help: str) -> None:
    p = sub.add_parser("layers", help="list the layer names a model offers")
    p.add_argument("model", metavar="MODEL", help=models_help)
    p.add_argument("--weights", help="state dict for the model (loaded with weights_only=True)")


def add_run(sub, models_help: str, data_help: str) -> None:
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
    p.add_argument("--image-column", help="hf: data: the column of images (default: the first Image feature)")
    p.add_argument("--label-column", help="hf: data: the column of labels (default: the first ClassLabel feature)")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the images found, the class images, the crops, the IG evaluations of the first layer pair and "
        "an estimate of peak memory, then exit without computing the circuit (predicted selection: runs the "
        "prediction pass, which is cached for the run)",
    )
    add_flags(p, NeurFlowConfig)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on an embedded model and real data (offline)")
    p.add_argument(
        "--model", default=next(iter(DEMOS)), help="the demo: " + " or ".join(DEMOS) + " (default: %(default)s)"
    )
    p.add_argument("--target", default=None, help="class name or index (default: the demo's)")
    p.add_argument("--out", default=None, metavar="DIR", help="default: runs/demo-MODEL-CLASS")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_flags(p, NeurFlowConfig, only=("device", "threads", "batch_size", "engine"))


def add_show(sub) -> None:
    p = sub.add_parser("show", help="text summary of a saved circuit")
    p.add_argument("directory", metavar="DIR")


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write DIR/report.html: a self-contained interactive view of a saved circuit")
    p.add_argument("directory", metavar="DIR")


def add_debug(sub) -> None:
    p = sub.add_parser("debug", help="debug one image through the circuit: group scores, crops, trace, verification")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--image", required=True, metavar="IMAGE", help="an image file, or an index into the run's data")
    add_flags(p, DebugOptions)
    add_flags(p, Reopen)


def add_audit(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="rank the circuit's groups, sub-groups and neurons by how much zeroing them removes the model's false "
        "positives and keeps its true positives",
    )
    p.add_argument("directory", metavar="DIR")
    add_flags(p, AuditOptions)
    add_flags(p, Reopen)


def add_label(sub) -> None:
    p = sub.add_parser("label", help="label the circuit's groups with a labeler (" + ", ".join(LABELERS) + ")")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--labeler", required=True, help="; ".join(f"{k}: {e.help}" for k, e in LABELERS.items()))
    add_flags(p, LabelOptions)
    for name, entry in LABELERS.items():  # each labeler's own options, in a group of its own
        g = p.add_argument_group(name)
        try:
            defaults = entry.defaults()
        except Exception:  # noqa: BLE001 - a labeler that cannot load still gets its flags; it fails when used
            defaults = {}
        for opt, (kind, text) in entry.options.items():
            shown = f" (default: {defaults[opt]})" if defaults.get(opt) is not None else ""
            flag = "--" + opt.replace("_", "-")
            p.record(g.add_argument(flag, dest=opt, type=kind, default=None, help=text + shown))


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the paper's experiments on a run: " + ", ".join([*EXPERIMENTS, "all"]))
    p.add_argument("directory", metavar="DIR")
    p.add_argument("experiment", metavar="EXPERIMENT", help=", ".join([*EXPERIMENTS, "all"]))
    p.add_argument("--json", action="store_true", help="print the JSON result(s)")
    add_flags(p, Options)
    add_flags(p, Reopen)
