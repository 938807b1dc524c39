"""``run_atlas``: prepare (load, one prediction pass, every check), connect to Ray (or not), run
each class on a worker, then write ``atlas.json`` and ``index.html``.

Ray does the distribution and the retries: each worker is an actor (``ClassWorker``, the model
and data loaded once) created with ``max_restarts`` and ``max_task_retries``, so a worker that
dies mid-class is restarted (on any node with room) and the class is retried there, resuming
from the layers it saved; the driver only hands each idle actor the next class (``ray.wait``).
Rerunning the same command resumes: a finished class is reloaded by ``fit`` (nothing recomputed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import time
from pathlib import Path

from .._state import available_cpus
from ..errors import NeurFlowError
from ..options import AtlasOptions
from ..progress import progress
from ..store import RunDir
from .layout import ATLAS_FILES
from .page import write_atlas
from .plan import Plan, Prepared, prepare
from .workers import ClassWorker

log = logging.getLogger(__name__)
OPTIONS = AtlasOptions()  # the defaults of run_atlas (and of neurflow atlas's flags)

MAX_RESTARTS = 3  # a worker killed (OOM, node lost) is restarted this often
MAX_TASK_RETRIES = 3  # a class whose worker died is retried this often
CONNECT_TIMEOUT_S = 5.0  # a --ray-address that accepts no connection within this is refused
_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


def run_atlas(
    plan: Plan,
    workers: int | None = OPTIONS.workers,
    threads: int | None = OPTIONS.threads_per_worker,
    gpus: float = OPTIONS.gpus_per_worker,
    ray_address: str | None = OPTIONS.ray_address,
    quiet: bool = OPTIONS.quiet,
    on_workers=None,
) -> dict:
    """Run every class of ``plan`` and write the atlas; returns the atlas (``atlas.json``'s
    content).  ``workers`` 0: serially in this process, without Ray; None: as many as the CPUs
    (local: this machine's, a cluster: the cluster's) over ``threads`` per worker.
    ``on_workers(actors)``: called with the Ray actors once created (tests find their pids)."""
    if workers is not None and workers < 0:
        raise NeurFlowError("workers", "an integer >= 0 (0: serially, without Ray)", workers)
    if threads is not None and threads < 1:
        raise NeurFlowError("threads_per_worker", "an integer >= 1", threads)
    if ray_address is not None and workers == 0:
        raise NeurFlowError("ray_address", "no Ray address with --workers 0 (serial, without Ray)", ray_address)
    _check_out(plan.root)
    serial = workers == 0
    if not serial:
        ray = _import_ray(workers)
        _check_address(ray_address)
    t_threads = threads or (None if serial else 1)  # serial default: all of this process's CPUs
    plan = _with_threads(plan, t_threads)
    prep = prepare(plan)  # every user error about the model, data, layers and targets: nothing written yet
    started = False
    if not serial:
        started = _connect(ray, ray_address, workers, t_threads or 1, gpus)
    try:
        prep.plan.root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if serial:
            results = _run_serial(prep, quiet)
        else:
            n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // (t_threads or 1))
            results = _run_ray(ray, prep, n, t_threads or 1, gpus, quiet, on_workers)
        seconds = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return write_atlas(prep, results, seconds)


def _with_threads(plan: Plan, threads: int | None) -> Plan:
    return dataclasses.replace(plan, config=dataclasses.replace(plan.config, threads=threads))


def _check_out(root: Path) -> None:
    """DIR must be new, empty or an atlas's (never write into someone else's directory)."""
    if root.exists() and not root.is_dir():
        raise NeurFlowError("out", "a directory", str(root), "it is a file")
    if root.is_dir():
        other = sorted(p.name for p in root.iterdir() if p.name not in ATLAS_FILES and not p.name.startswith(".tmp-"))
        if other:
            raise NeurFlowError(
                "out",
                "a new or empty directory, or an atlas's",
                str(root),
                f"it holds other files ({', '.join(other[:3])}); choose another {{p:out}}",
            )


def _import_ray(workers):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    try:
        import ray
    except ImportError:
        raise NeurFlowError(
            "workers",
            "0 (serially) when Ray is not installed",
            workers if workers is not None else "default",
            "install it with pip install 'neurflow[ray]', or pass {p:workers} 0",
        ) from None
    return ray


def _check_address(address: str | None) -> None:
    """A well-formed address whose HOST:PORT accepts connections (checked in seconds: Ray itself
    retries an unreachable address for minutes)."""
    if address is None or address.strip() in ("auto", "local"):
        return
    expected = "auto, HOST:PORT or ray://HOST:PORT of a running Ray cluster"
    text = address.strip()
    if not _ADDRESS.match(text):
        raise NeurFlowError("ray_address", expected, address)
    host, _, port = text.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise NeurFlowError(
            "ray_address", expected, address, f"cannot connect: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _connect(ray, address, workers, threads: int, gpus: float) -> bool:
    """Join the cluster at ``address``, or start a local instance sized for the workers; True
    when this call started Ray (then the caller shuts it down).  Ray already initialised in this
    process (a test, a notebook) is used as it is."""
    if ray.is_initialized():
        return False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address in (None, "local"):
            n = workers or max(1, available_cpus() // threads)
            # Ray starts its workers at niceness 15: on a shared machine they would yield to every
            # other process, so that the atlas ran slower than a serial run; ours run as the driver
            os.environ.setdefault("RAY_worker_niceness", "0")
            # include_dashboard=False serves no dashboard (no web page, no URL), but Ray 2.60 still
            # starts its API-server process (ray/dashboard/dashboard.py with only the non-UI modules)
            # and a per-node agent: they are part of Ray's core.  The one module left that would
            # talk to the network is usage-stats reporting: off, for an offline tool
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=n * threads, num_gpus=None if gpus else 0, **kw)
        else:
            ray.init(address=address.strip(), **kw)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise NeurFlowError(
            "ray_address", "auto, HOST:PORT or ray://HOST:PORT of a running Ray cluster", address, text
        ) from None
    return True


# -- running the classes -------------------------------------------------------------------------
def _bar(prep: Prepared, quiet: bool):
    return progress(total=len(prep.classes), desc="atlas", quiet=quiet, unit="class")


def _layers_done(directory) -> int:
    try:
        m = RunDir(directory).read_manifest()
    except NeurFlowError:  # damaged: the class's run recomputes it
        return 0
    return 0 if m is None else len(m.get("layers_done", [])) + (1 if m.get("complete") else 0)


def _show_running(bar, prep: Prepared, running: list) -> None:
    total = len(prep.plan.layers or ()) - 1
    parts = [
        f"{name if name is not None else index} {min(_layers_done(prep.plan.class_dir(index, name)), total)}/{total}"
        for index, name in running
    ]
    bar.set_postfix_str(", ".join(parts[:4]) + (" ..." if len(parts) > 4 else ""), refresh=True)


def _run_serial(prep: Prepared, quiet: bool) -> list:
    worker = ClassWorker(prep.plan, prep.predictions, None, prep.loaded, prep.data, quiet=True)
    results = []
    with _bar(prep, quiet) as bar:
        for index, name in prep.classes:
            _show_running(bar, prep, [(index, name)])
            results.append(worker.run(index, name))
            bar.update(1)
    return results


def _run_ray(ray, prep: Prepared, n: int, threads: int, gpus: float, quiet: bool, on_workers=None) -> list:
    actor = ray.remote(ClassWorker).options(
        num_cpus=threads,
        num_gpus=gpus or 0,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_TASK_RETRIES,
    )
    predictions = ray.put(prep.predictions)
    n = max(1, min(n, len(prep.classes)))
    actors = [actor.remote(prep.plan, None, threads) for _ in range(n)]
    if on_workers is not None:
        on_workers(actors)
    queue = list(prep.classes)
    idle = list(actors)
    pending: dict = {}
    results: dict = {}
    with _bar(prep, quiet) as bar:
        while queue or pending:
            while idle and queue:
                a = idle.pop(0)
                index, name = queue.pop(0)
                pending[a.run.remote(index, name, [predictions])] = (a, index, name)  # fetched once per worker
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                a, index, name = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                    idle.append(a)
                except ray.exceptions.RayActorError as exc:  # died more often than it may restart
                    results[index] = _lost(prep, index, name, exc)
                except ray.exceptions.RayError as exc:
                    results[index] = _lost(prep, index, name, exc)
                    idle.append(a)
                bar.update(1)
            if queue and not idle and not pending:  # every worker is gone
                for index, name in queue:
                    results[index] = _lost(prep, index, name, "no worker left")
                    bar.update(1)
                queue = []
            _show_running(bar, prep, [(i, nm) for _, i, nm in pending.values()])
    for a in actors:
        ray.kill(a)
    return [results[index] for index, _ in prep.classes]


def _lost(prep: Prepared, index: int, name, exc) -> dict:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return {
        "target": int(index),
        "name": name,
        "dir": str(prep.plan.class_dir(index, name)),
        "ok": False,
        "error": f"worker lost after {MAX_TASK_RETRIES} retries: {text}",
        "seconds": None,
    }
