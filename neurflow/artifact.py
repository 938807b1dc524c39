"""The artifact on disk: ``circuit.json`` (schema in docs/artifact.md), ``arrays.npz`` and crop
thumbnails; partial runs saved after every layer, resumed when the run hash matches.

Every file is written to a temporary name and renamed into place; ``manifest.json`` is written
last, so a directory is never readable as complete unless it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch

from .circuit import Circuit, Layer
from .errors import NeurFlowError

log = logging.getLogger(__name__)

SCHEMA = "neurflow.circuit"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".neurflow.lock"  # flock()ed by the process writing the run; holds its pid
_UMASK = os.umask(0)
os.umask(_UMASK)


FAULT_ENV = "NEURFLOW_FAULT"  # tests only: "write:<glob>" kills the process mid-write (docs/reliability.md)


def _fault(path: Path) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith("write:"):
        import fnmatch
        import signal

        if fnmatch.fnmatch(str(path), spec[6:]) or fnmatch.fnmatch(path.name, spec[6:]):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are meant to be shared
        if FAULT_ENV in os.environ:
            _fault(path)  # the temporary file is written, the rename has not happened
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False).encode())


def write_npz(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


def hash_tensors(items) -> str:
    h = hashlib.sha256()
    for name, t in items:
        h.update(str(name).encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    return hash_tensors(sorted(model.state_dict().items()))


def run_hash(model_digest: str, data_digest: str, settings: dict, code: str | None = None) -> str:
    """A run's identity: the weights, the class images, the method settings and ``code`` (what
    the model computes besides its weights: ``LayerGraph.code`` and the model spec)."""
    h = hashlib.sha256()
    h.update(model_digest.encode())
    h.update(data_digest.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    if code is not None:
        h.update(b"\0code\0" + code.encode())
    return h.hexdigest()[:32]


class RunDir:
    """The layout of a run directory (docs/artifact.md), known here and nowhere else."""

    def __init__(self, directory):
        self.path = Path(directory)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # -- what the run writes ---------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def circuit(self) -> Path:
        return self.path / "circuit.json"

    @property
    def arrays(self) -> Path:
        return self.path / "arrays.npz"

    @property
    def crops(self) -> Path:
        return self.path / "crops"

    def crop(self, index: int) -> Path:
        return self.crops / f"{int(index)}.png"

    def thumbnails(self) -> list[int]:
        """The crop indices that have a thumbnail, ascending."""
        return sorted(int(p.stem) for p in self.crops.glob("*.png") if p.stem.isdigit()) if self.crops.is_dir() else []

    @property
    def partial(self) -> Path:
        return self.path / "partial"

    def partial_layer(self, i: int, ext: str) -> Path:
        return self.partial / f"layer{i}.{ext}"

    # -- what the commands on a finished run write -----------------------------------------------
    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def audit(self) -> Path:
        return self.path / "audit.json"

    @property
    def debug(self) -> Path:
        return self.path / "debug"

    def debug_file(self, name: str, ext: str = "json") -> Path:
        return self.debug / f"{name}.{ext}"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    def eval_file(self, name: str, ext: str = "json") -> Path:
        return self.eval / f"{name}.{ext}"

    def eval_partial(self, name: str) -> Path:
        return self.eval / f"{name}.partial.json"

    def eval_results(self) -> list[Path]:
        """Finished experiment results (not their checkpoints), by name."""
        if not self.eval.is_dir():
            return []
        return [p for p in sorted(self.eval.glob("*.json")) if not p.name.endswith(".partial.json")]

    # -- the circuit ---------------------------------------------------------------------------
    def read_circuit(self) -> Circuit:
        """The finished run's ``Circuit``, without the model."""
        d = self.path
        if not d.is_dir():
            raise NeurFlowError("directory", "a neurflow run directory", str(d), "it does not exist")
        if not self.circuit.exists() or not self.manifest.exists():
            raise NeurFlowError(
                "directory",
                "a finished neurflow run directory",
                str(d),
                "no circuit.json/manifest.json: the run is partial or this is not a run; "
                "rerun `neurflow run` into it to resume",
            )
        manifest = json.loads(self.manifest.read_text())
        doc = json.loads(self.circuit.read_text())
        version = doc.get("schema_version")
        if doc.get("schema") != SCHEMA or not isinstance(version, int):
            raise NeurFlowError(
                "directory", f"a {SCHEMA} artifact", str(self.circuit), "circuit.json has no neurflow schema"
            )
        if version > SCHEMA_VERSION:
            raise NeurFlowError(
                "directory",
                f"schema version <= {SCHEMA_VERSION}",
                version,
                "written by a newer neurflow; upgrade neurflow to read it",
            )
        if not manifest.get("complete") or manifest.get("run_hash") != doc.get("run_hash"):
            raise NeurFlowError("directory", "a finished run", str(d), "the run is partial; rerun it to resume")
        arrays = {}
        if self.arrays.exists():
            with np.load(self.arrays) as z:
                arrays = {k: z[k] for k in z.files}
        return Circuit.from_json(doc, arrays)

    def write_circuit(self, circuit: Circuit, run_hash: str | None = None) -> None:
        """Write ``circuit.json`` (atomically) under ``run_hash`` (default: the one the circuit records)."""
        doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_hash": run_hash or circuit.meta.get("run_hash")}
        doc.update(circuit.to_json())
        write_json(self.circuit, doc)


_HELD: dict = {}  # run directory (real path) -> weakref to the RunStore of this process that locks it


class RunStore:
    """Saving and resuming one run in a directory: refuses a different run unless ``overwrite``;
    resumes a matching one layer by layer; hands back a finished one.

    One process at a time: the store holds an OS lock (``flock``) on ``DIR/.neurflow.lock`` from
    its creation until ``finish``/``finished``/``release`` (or the process ends, crashed or not);
    a second store on the same directory is refused with the holder's pid."""

    _lock_fd: int | None = None

    def __init__(self, directory, digest: str, overwrite: bool = False):
        self.layout = RunDir(directory)
        self.dir = self.layout.path
        self.digest = digest
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock(directory)
            probe = self.dir / ".neurflow-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self.release()
            raise NeurFlowError("out", "a writable directory", str(directory), exc.strerror or str(exc)) from None
        try:
            self._open(directory, overwrite)
        except BaseException:
            self.release()
            raise

    def _open(self, directory, overwrite: bool) -> None:
        manifest = self.read_manifest()
        self.done: list[dict] = []
        if manifest is None:
            if any(p.name not in (MANIFEST, LOCK) and not p.name.startswith(".tmp-") for p in self.dir.iterdir()):
                # never delete what is not ours, even with --overwrite
                raise NeurFlowError(
                    "out",
                    "an empty directory or a neurflow run directory",
                    str(directory),
                    "it holds other files and no neurflow manifest; choose another {p:out}",
                )
            self._manifest(False)  # claim the directory first: a crash before the first layer stays resumable
        elif manifest.get("run_hash") != self.digest:
            if not overwrite:
                raise NeurFlowError(
                    "out",
                    "a directory holding this run (same model, data and settings)",
                    str(directory),
                    "it holds a different run; pass {p:overwrite} to replace it",
                )
            self._clear()
            self._manifest(False)
        else:
            self.done = manifest.get("layers_done", [])
        for tmp in self.dir.rglob(".tmp-*"):  # left by a write that was killed before its rename
            tmp.unlink(missing_ok=True)

    def _lock(self, directory) -> None:
        """Take the directory's lock, or refuse: another process is writing this run.  A lock that
        an earlier store of this process still holds (its ``fit`` raised, and a traceback keeps
        it alive) is taken over: one process writes a directory from one store at a time."""
        key = os.path.realpath(self.dir)
        earlier = _HELD.get(key)
        if earlier is not None and earlier() is not None:
            earlier().release()
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise NeurFlowError(
                    "out",
                    "a run directory no other process is writing",
                    str(directory),
                    f"another neurflow process is writing {directory} (pid {holder}); wait for it to finish "
                    "(the same command then loads its result) or choose another {p:out}",
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts): carry on unlocked
                log.debug("no lock on %s: %s", self.layout.lock, exc)
        self._lock_fd = fd
        _HELD[key] = weakref.ref(self)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Release the directory's lock (closing the file releases the flock)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown; the OS releases the lock anyway
            pass

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name == LOCK:  # ours, held: removing it would let a second process lock a new file
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def read_manifest(self) -> dict | None:
        path = self.layout.manifest
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def complete(self) -> bool:
        m = self.read_manifest()
        return bool(m and m.get("complete") and m.get("run_hash") == self.digest)

    def finished(self) -> Circuit | None:
        """The finished run in the directory when it is this run, else None."""
        if not self.complete:
            return None
        log.warning("loaded the finished run in %s (nothing recomputed)", self.dir)
        try:
            return self.layout.read_circuit()
        finally:
            self.release()

    def _manifest(self, complete: bool) -> None:
        write_json(
            self.layout.manifest,
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "run_hash": self.digest,
                "complete": complete,
                "layers_done": self.done,
            },
        )

    def save_layer(self, layer: Layer, arrays: dict) -> None:
        i = len(self.done)
        write_json(self.layout.partial_layer(i, "json"), layer.to_json())
        write_npz(self.layout.partial_layer(i, "npz"), arrays)
        entry = self.layout.partial_layer(i, "json").relative_to(self.dir).as_posix()
        self.done.append({"name": layer.name, "file": entry})
        self._manifest(False)

    def load_layers(self) -> list[tuple[Layer, dict]]:
        out = []
        for i, entry in enumerate(self.done):
            d = json.loads((self.dir / entry["file"]).read_text())
            with np.load(self.layout.partial_layer(i, "npz")) as z:
                arrays = {k: z[k] for k in z.files}
            out.append((Layer.from_json(d), arrays))
        if out:
            log.info("resuming: %d layer(s) already done in %s", len(out), self.dir)
        return out

    def finish(self, circuit: Circuit, pool=None, thumbnails: dict | None = None) -> None:
        """Write the finished run: the crop thumbnails (``thumbnails`` {crop: PNG bytes}, or made
        from ``pool`` for every display exemplar), the arrays, ``circuit.json``, then the manifest
        (last: the directory is complete only now)."""
        if thumbnails is None and pool is not None:
            from .data import thumbnails as make

            shown = sorted(
                {
                    c
                    for l in circuit.layers
                    for n in l.nodes.values()
                    for s in n.sub_concepts
                    for c in s.display_exemplars
                }
            )
            thumbnails = make(pool, [c for c in shown if not self.layout.crop(c).exists()])
        for idx, png in (thumbnails or {}).items():
            if not self.layout.crop(idx).exists():
                atomic_write(self.layout.crop(idx), png)
        write_npz(self.layout.arrays, dict(circuit.arrays))
        self.layout.write_circuit(circuit, self.digest)
        self._manifest(True)
        shutil.rmtree(self.layout.partial, ignore_errors=True)
        self.release()


def load(directory) -> Circuit:
    """Load a finished run's ``Circuit`` without the model."""
    return RunDir(directory).read_circuit()
