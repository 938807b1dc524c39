"""The layout of a run directory (docs/artifact.md), known here and nowhere else, and reading a
finished run's ``Circuit`` back without the model.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from ..circuit import Circuit
from ..errors import NeurFlowError
from .files import write_json, writing
from .lock import LOCK, DirLock

SCHEMA = "neurflow.circuit"


SCHEMA_VERSION = 1


MANIFEST = "manifest.json"


# how long a command writing into a finished run waits for another writer: a label's or a
# report's write takes well under a second; a `neurflow run` writing the directory takes longer
# (the command is refused then)
WRITE_WAIT_S = 15.0


class DamagedRun(NeurFlowError):
    """A file of a run directory that cannot be read as neurflow writes it (truncated, not JSON,
    not neurflow's schema, values of the wrong type): one line naming the file and the way out."""

    def __init__(self, directory, name: str, reason: str):
        self.file, self.reason = name, reason
        super().__init__(
            "directory",
            "an intact neurflow run directory",
            str(directory),
            f"{name} is damaged: {reason}; rerun `neurflow run ...` into it to recompute the run (with --overwrite "
            "where it is refused)",
        )


class Layout:
    """A directory whose files one class names (``RunDir``, ``atlas.layout.AtlasDir``): usable
    wherever a path is (``os.fspath``, ``str``)."""

    def __init__(self, directory):
        self.path = Path(directory)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


class RunDir(Layout):
    """The layout of a run directory (docs/artifact.md), known here and nowhere else."""

    read_hash: str | None = None  # the run hash of the finished run ``read_circuit`` read

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
    def audit_crops(self) -> Path:
        """The thumbnails of the audit's false-positive exemplars (``fp-*.png``)."""
        return self.path / "audit-crops"

    def audit_crop(self, name: str) -> Path:
        return self.audit_crops / name

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

    # -- reading, strictly: what is not as neurflow wrote it is a DamagedRun ------------------------
    def read_json(self, name: str):
        """The JSON document ``name`` of the directory, None when the file does not exist."""
        try:
            text = (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DamagedRun(self.path, name, f"it cannot be read ({exc.strerror})") from None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise DamagedRun(self.path, name, "truncated or not JSON") from None

    def read_manifest(self) -> dict | None:
        """``manifest.json`` (None where there is none), checked: a ``DamagedRun`` where it cannot be
        read or is not a neurflow manifest."""
        m = self.read_json(MANIFEST)
        if m is None:
            return None
        if not isinstance(m, dict) or m.get("schema") != SCHEMA or not _is_int(m.get("schema_version")):
            raise DamagedRun(self.path, MANIFEST, "not a neurflow manifest (no neurflow schema)")
        if m["schema_version"] > SCHEMA_VERSION:  # a newer neurflow's: read_circuit says so
            return m
        done = m.get("layers_done")
        entries = isinstance(done, list) and all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("file"), str) for e in done
        )
        if not (isinstance(m.get("run_hash"), str) and isinstance(m.get("complete"), bool) and entries):
            raise DamagedRun(self.path, MANIFEST, "run_hash, complete or layers_done missing or of the wrong type")
        return m

    def read_arrays(self, path: Path | None = None) -> dict:
        """The arrays of ``arrays.npz`` (or of the .npz ``path``) by name; {} where there is none."""
        path = path or self.arrays
        if not path.exists():
            return {}
        name = path.relative_to(self.path).as_posix()
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz")
            with z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DamagedRun(self.path, name, f"truncated or not an .npz ({type(exc).__name__})") from None

    # -- the circuit ---------------------------------------------------------------------------
    def read_circuit(self) -> Circuit:
        """The finished run's ``Circuit``, without the model; a ``DamagedRun`` naming the file where
        the manifest, ``circuit.json`` or ``arrays.npz`` is not as neurflow wrote it."""
        d = self.path
        if not d.is_dir():
            raise NeurFlowError("directory", "a neurflow run directory", str(d), "it does not exist")
        manifest = self.read_manifest()
        if manifest is None or not self.circuit.exists():
            raise NeurFlowError(
                "directory",
                "a finished neurflow run directory",
                str(d),
                "no circuit.json/manifest.json: the run is partial or this is not a run; "
                "rerun `neurflow run` into it to resume",
            )
        doc = self.read_json(self.circuit.name)
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not _is_int(doc.get("schema_version")):
            raise DamagedRun(d, self.circuit.name, "not a neurflow circuit (no neurflow schema)")
        version = max(doc["schema_version"], manifest["schema_version"])
        if version > SCHEMA_VERSION:
            raise NeurFlowError(
                "directory",
                f"schema version <= {SCHEMA_VERSION}",
                version,
                "written by a newer neurflow; upgrade neurflow to read it",
            )
        if not manifest["complete"] or manifest["run_hash"] != doc.get("run_hash"):
            raise NeurFlowError("directory", "a finished run", str(d), "the run is partial; rerun it to resume")
        arrays = self.read_arrays()
        try:
            circuit = Circuit.from_json(doc, arrays)
        except NeurFlowError as exc:
            if exc.parameter != "circuit":
                raise
            raise DamagedRun(d, self.circuit.name, f"{exc.given}: expected {exc.expected}") from None
        self.read_hash = manifest["run_hash"]
        return circuit

    # -- writing into a finished run -------------------------------------------------------------
    @contextlib.contextmanager
    def updating(self) -> Iterator[None]:
        """Hold the directory's lock while a command writes into the finished run (``label``,
        ``debug``, ``audit``, ``eval``, ``report``): waits up to ``WRITE_WAIT_S`` for another writer,
        then refuses; checks that the directory still holds a finished run, the one this RunDir
        read (``read_circuit``) if it read one: a run replaced meanwhile (``run --overwrite``) is
        refused, nothing written.  A failed write (disk full, read-only file system) is one line."""
        with self.locked():
            m = self.read_manifest()
            if m is None or not m.get("complete"):
                raise NeurFlowError(
                    "directory",
                    "a finished neurflow run directory",
                    str(self.path),
                    "it holds no finished run now (a `neurflow run` replaced it or is writing it): nothing "
                    "was written; rerun this command once the run has finished",
                )
            if self.read_hash is not None and m.get("run_hash") != self.read_hash:
                raise NeurFlowError(
                    "directory",
                    "the run this command read",
                    str(self.path),
                    "another run replaced it meanwhile (`neurflow run --overwrite`): nothing was written; "
                    "rerun this command on the new run",
                )
            yield

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The directory's lock (waiting up to ``WRITE_WAIT_S`` for another writer), a failed write
        in the block one line; ``updating`` without its check of the run."""
        with writing("directory", self.path):
            with DirLock(self.path, "directory", WRITE_WAIT_S, "wait for it to finish, then rerun this command"):
                yield

    def check_writable(self) -> None:
        """Refuse now, in one line, what ``updating`` would refuse at the end: a directory that
        cannot be written, or that another process is writing (before a long computation)."""
        with self.updating():
            pass

    def write_circuit(self, circuit: Circuit, run_hash: str | None = None) -> None:
        """Write ``circuit.json`` (atomically) under ``run_hash`` (default: the one the circuit records)."""
        doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_hash": run_hash or circuit.meta.get("run_hash")}
        doc.update(circuit.to_json())
        write_json(self.circuit, doc)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load(directory) -> Circuit:
    """Load a finished run's ``Circuit`` without the model.

    Parameters
    ----------
    directory : path
        A finished run directory (``neurflow run``, ``NeurFlow.fit(..., out=DIR)``).

    Returns
    -------
    Circuit
        The circuit as saved in ``circuit.json`` and ``arrays.npz``.

    Raises
    ------
    NeurFlowError
        The directory does not exist, holds a partial run or no run, was written by a newer
        neurflow (schema version), or a file of it is damaged (``DamagedRun``, naming the file).
    """
    return RunDir(directory).read_circuit()
