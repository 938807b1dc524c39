"""``ClassWorker``: loads the model and the data once, then runs classes one at a time through
``NeurFlow.fit(..., out=DIR)`` (which saves each layer as it finishes and resumes from the
saved ones) and writes each class's ``report.html`` as ``neurflow run`` does.

The same class runs in-process (``--workers 0``) and as a Ray actor (``ray.remote(ClassWorker)``,
see ``driver``): the outputs cannot differ by construction.  A class that fails with a user
error (or any exception) is returned as a failure, not raised: the other classes go on."""

from __future__ import annotations

import logging
import os
import time

from ..analysis.report import write_report
from ..errors import NeurFlowError
from ..method import NeurFlow
from ..store import RunDir
from . import plan as plans
from .plan import Plan


class ClassWorker:
    """``ClassWorker(plan, predictions, threads)``: ``predictions`` are the shared logits of
    ``prepare`` (None: given with each class as ``[ObjectRef]``, fetched once per worker);
    ``loaded``/``data`` skip loading when the caller has them already (the serial path)."""

    def __init__(self, plan: Plan, predictions, threads: int | None = None, loaded=None, data=None, quiet=True):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if loaded is None or data is None:
            logging.basicConfig(level=logging.WARNING, format="neurflow worker: %(message)s")
            loaded, data, _ = plans.load_plan_inputs(plan)
        self.plan, self.loaded, self.data = plan, loaded, data
        self.predictions = predictions
        self.prov = plans.provenance(plan, loaded, data)
        self.quiet = quiet

    def pid(self) -> int:
        return os.getpid()

    def run(self, index: int, name: str | None = None, predictions=None) -> dict:
        """Compute class ``index`` into its directory (resumed or reloaded when already there) and
        write its report; returns {target, name, dir, ok, error, seconds}.  ``predictions``:
        ``[ObjectRef]`` of the shared logits when the worker was made without them."""
        if self.predictions is None and isinstance(predictions, list):
            import ray

            self.predictions = ray.get(predictions[0])
        plan = self.plan
        out = plan.class_dir(index, name)
        t0 = time.perf_counter()
        result: dict = {"target": int(index), "name": name, "dir": str(out), "ok": False, "error": None}
        try:
            self._fit(index, out)
        except NeurFlowError as exc:
            result["error"] = {
                "parameter": exc.parameter,
                "expected": exc.expected,
                "given": exc.given if isinstance(exc.given, (str, int, float, type(None))) else repr(exc.given),
                "hint": exc.hint,
            }
        except Exception as exc:  # noqa: BLE001 - a bug in one class must not stop the others
            result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        else:
            result["ok"] = True
        result["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    def _fit(self, index: int, out) -> None:
        plan, loaded, data = self.plan, self.loaded, self.data
        NeurFlow(plan.config).fit_loaded(
            loaded,
            data,
            int(index),
            list(plan.layers or ()),
            out=out,
            overwrite=plan.overwrite,
            quiet=self.quiet,
            provenance=self.prov,
            predictions=self.predictions,
        )
        d = RunDir(out)
        if not d.report.exists() or d.report.stat().st_mtime < d.circuit.stat().st_mtime:
            write_report(out)
