"""The artifact on disk: ``circuit.json`` (schema in docs/artifact.md), ``arrays.npz`` and crop
thumbnails; partial runs saved after every layer, resumed when the run hash matches.

Every file is written to a temporary name and renamed into place; ``manifest.json`` is written
last, so a directory is never readable as complete unless it is.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .circuit import Circuit, Layer
from .errors import NeurFlowError

SCHEMA = "neurflow.circuit"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


FAULT_ENV = "NEURFLOW_FAULT"   # tests only: "write:<glob>" kills the process mid-write (docs/reliability.md)


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
            _fault(path)        # the temporary file is written, the rename has not happened
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


def run_hash(model_digest: str, data_digest: str, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(model_digest.encode())
    h.update(data_digest.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


class RunStore:
    """A run directory: refuses a different run unless ``overwrite``; resumes a matching one."""

    def __init__(self, directory, digest: str, overwrite: bool = False):
        self.dir = Path(directory)
        self.digest = digest
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".neurflow-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise NeurFlowError("--out", "a writable directory", str(directory), exc.strerror or str(exc)) from None
        manifest = self.read_manifest()
        self.done: list[dict] = []
        if manifest is None:
            if any(p.name != MANIFEST and not p.name.startswith(".tmp-") for p in self.dir.iterdir()):
                # never delete what is not ours, even with --overwrite
                raise NeurFlowError("--out", "an empty directory or a neurflow run directory", str(directory),
                                    "it holds other files and no neurflow manifest; choose another --out")
            self._manifest(False)   # claim the directory first: a crash before the first layer stays resumable
        elif manifest.get("run_hash") != digest:
            if not overwrite:
                raise NeurFlowError("--out", "a directory holding this run (same model, data and settings)",
                                    str(directory), "it holds a different run; pass --overwrite to replace it")
            self._clear()
            self._manifest(False)
        else:
            self.done = manifest.get("layers_done", [])
        for tmp in self.dir.rglob(".tmp-*"):   # left by a write that was killed before its rename
            tmp.unlink(missing_ok=True)

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def read_manifest(self) -> dict | None:
        path = self.dir / MANIFEST
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

    def _manifest(self, complete: bool) -> None:
        write_json(self.dir / MANIFEST, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                                         "run_hash": self.digest, "complete": complete,
                                         "layers_done": self.done})

    def save_layer(self, layer: Layer, arrays: dict) -> None:
        i = len(self.done)
        write_json(self.dir / "partial" / f"layer{i}.json", layer.to_json())
        write_npz(self.dir / "partial" / f"layer{i}.npz", arrays)
        self.done.append({"name": layer.name, "file": f"partial/layer{i}.json"})
        self._manifest(False)

    def load_layers(self) -> list[tuple[Layer, dict]]:
        out = []
        for i, entry in enumerate(self.done):
            d = json.loads((self.dir / entry["file"]).read_text())
            with np.load(self.dir / "partial" / f"layer{i}.npz") as z:
                arrays = {k: z[k] for k in z.files}
            out.append((Layer.from_json(d), arrays))
        return out

    def finish(self, circuit: Circuit, thumbnails: dict) -> None:
        for idx, png in thumbnails.items():
            path = self.dir / "crops" / f"{idx}.png"
            if not path.exists():
                atomic_write(path, png)
        write_npz(self.dir / "arrays.npz", dict(circuit.arrays))
        doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_hash": self.digest}
        doc.update(circuit.to_json())
        write_json(self.dir / "circuit.json", doc)
        self._manifest(True)
        shutil.rmtree(self.dir / "partial", ignore_errors=True)


def load(directory) -> Circuit:
    """Load a finished run's ``Circuit`` without the model."""
    d = Path(directory)
    manifest_path, circuit_path = d / MANIFEST, d / "circuit.json"
    if not d.is_dir():
        raise NeurFlowError("DIR", "a neurflow run directory", str(directory), "it does not exist")
    if not circuit_path.exists() or not manifest_path.exists():
        raise NeurFlowError("DIR", "a finished neurflow run directory", str(directory),
                            "no circuit.json/manifest.json: the run is partial or this is not a run; rerun `neurflow run` into it to resume")
    manifest = json.loads(manifest_path.read_text())
    doc = json.loads(circuit_path.read_text())
    version = doc.get("schema_version")
    if doc.get("schema") != SCHEMA or not isinstance(version, int):
        raise NeurFlowError("DIR", f"a {SCHEMA} artifact", str(circuit_path), "circuit.json has no neurflow schema")
    if version > SCHEMA_VERSION:
        raise NeurFlowError("DIR", f"schema version <= {SCHEMA_VERSION}", version,
                            "written by a newer neurflow; upgrade neurflow to read it")
    if not manifest.get("complete") or manifest.get("run_hash") != doc.get("run_hash"):
        raise NeurFlowError("DIR", "a finished run", str(directory), "the run is partial; rerun it to resume")
    arrays = {}
    if (d / "arrays.npz").exists():
        with np.load(d / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
    return Circuit.from_json(doc, arrays)
