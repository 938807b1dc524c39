"""The layout of a run directory (docs/artifact.md), known here and nowhere else, and reading a
finished run's ``Circuit`` back without the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..circuit import Circuit
from ..errors import NeurFlowError
from .files import write_json

SCHEMA = "neurflow.circuit"


SCHEMA_VERSION = 1


MANIFEST = "manifest.json"


LOCK = ".neurflow.lock"  # flock()ed by the process writing the run; holds its pid


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
        The directory does not exist, holds a partial run or no run, or was written by a newer
        neurflow (schema version).
    """
    return RunDir(directory).read_circuit()
