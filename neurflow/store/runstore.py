"""Saving and resuming one run in a directory under a lock (``RunStore``): partial runs saved
after every layer, resumed when the run hash matches, a finished one handed back.

Every file is written atomically (``files``); ``manifest.json`` is written last, so a directory is
never readable as complete unless it is.  A damaged file of the store's own run (truncated,
bit-flipped) is recomputed or, for another run, replaced with ``overwrite``; a directory that is
not a neurflow run is never deleted.
"""

from __future__ import annotations

import logging
import shutil

from ..circuit import Circuit, Layer
from ..errors import NeurFlowError
from .files import TMP_PREFIX, atomic_write, write_json, write_npz, writing
from .layout import MANIFEST, SCHEMA, SCHEMA_VERSION, DamagedRun, RunDir
from .lock import LOCK, DirLock
from .thumbnails import thumbnails as make_thumbnails

log = logging.getLogger(__name__)


class RunStore:
    """Saving and resuming one run in a directory: refuses a different run unless ``overwrite``;
    resumes a matching one layer by layer; hands back a finished one.

    One process at a time: the store holds an OS lock (``flock``) on ``DIR/.neurflow.lock`` from
    its creation until ``finish``/``finished``/``release`` (or the process ends, crashed or not);
    a second store on the same directory is refused with the holder's pid."""

    _lock: DirLock | None = None

    def __init__(self, directory, digest: str, overwrite: bool = False):
        self.layout = RunDir(directory)
        self.dir = self.layout.path
        self.digest = digest
        try:
            with writing("out", directory):
                self.dir.mkdir(parents=True, exist_ok=True)
                self.ours = self.layout.lock.exists()  # a lock file: neurflow has written here
                self._lock = DirLock(
                    directory,
                    "out",
                    0.0,
                    "wait for it to finish (the same command then loads its result) or choose another {p:out}",
                )
                probe = self.dir / ".neurflow-write-test"
                probe.write_bytes(b"")
                probe.unlink()
                self._open(directory, overwrite)
        except BaseException:
            if self._lock is not None and not self.ours:  # refused: leave no mark of neurflow behind
                self.layout.lock.unlink(missing_ok=True)
            self.release()
            raise

    def _open(self, directory, overwrite: bool) -> None:
        self.done: list[dict] = []
        try:
            manifest = self.layout.read_manifest()
        except DamagedRun as exc:
            self._damaged(directory, overwrite, exc)
            return
        if manifest is None:
            if any(p.name not in (MANIFEST, LOCK) and not p.name.startswith(TMP_PREFIX) for p in self.dir.iterdir()):
                if not self.ours:  # never delete what is not ours, even with --overwrite
                    raise NeurFlowError(
                        "out",
                        "an empty directory or a neurflow run directory",
                        str(directory),
                        "it holds other files and no neurflow manifest; choose another {p:out}",
                    )
                self._damaged(directory, overwrite, DamagedRun(directory, MANIFEST, "it is missing"))
                return
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
        for tmp in self.dir.rglob(TMP_PREFIX + "*"):  # left by a write that was killed before its rename
            tmp.unlink(missing_ok=True)

    def _damaged(self, directory, overwrite: bool, exc: DamagedRun) -> None:
        """The manifest cannot be read: a directory neurflow wrote (its lock file, or a
        ``circuit.json`` of neurflow's schema) is recomputed when its circuit names this run,
        replaced with ``overwrite``; anything else is refused."""
        circuit = self._circuit_doc()
        ours = self.ours or circuit is not None
        if ours and circuit is not None and circuit.get("run_hash") == self.digest:
            log.warning("%s in %s is damaged; recomputing the run", exc.file, directory)
        elif ours and overwrite:
            self._clear()
        elif ours:
            raise NeurFlowError(
                "out", "an intact neurflow run directory", str(directory),
                f"{exc.file} is damaged ({exc.reason}); pass {{p:overwrite}} to replace the run",
            )  # fmt: skip
        else:
            raise NeurFlowError(
                "out",
                "an empty directory or a neurflow run directory",
                str(directory),
                f"{exc.file} is not a neurflow manifest and nothing marks the directory as neurflow's; "
                "choose another {p:out}",
            )
        self._manifest(False)

    def _circuit_doc(self) -> dict | None:
        """``circuit.json`` when it reads as a neurflow circuit document (its schema), else None."""
        try:
            doc = self.layout.read_json(self.layout.circuit.name)
        except DamagedRun:
            return None
        return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None

    def release(self) -> None:
        """Release the directory's lock."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

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
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def read_manifest(self) -> dict | None:
        """The manifest, or None where there is none or it is damaged."""
        try:
            return self.layout.read_manifest()
        except DamagedRun:
            return None

    @property
    def complete(self) -> bool:
        m = self.read_manifest()
        return bool(m and m.get("complete") and m.get("run_hash") == self.digest)

    def finished(self) -> Circuit | None:
        """The finished run in the directory when it is this run, else None.  A finished run
        whose circuit or arrays are damaged is recomputed (the store is kept for that)."""
        if not self.complete:
            return None
        try:
            circuit = self.layout.read_circuit()
        except DamagedRun as exc:
            log.warning("%s in %s is damaged; recomputing the run", exc.file, self.dir)
            self.done = []
            with writing("out", self.dir):
                self._manifest(False)
            return None
        log.warning("loaded the finished run in %s (nothing recomputed)", self.dir)
        self.release()
        return circuit

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
        with writing("out", self.dir):
            write_json(self.layout.partial_layer(i, "json"), layer.to_json())
            write_npz(self.layout.partial_layer(i, "npz"), arrays)
            entry = self.layout.partial_layer(i, "json").relative_to(self.dir).as_posix()
            self.done.append({"name": layer.name, "file": entry})
            self._manifest(False)

    def load_layers(self) -> list[tuple[Layer, dict]]:
        """The finished layers of a partial run; from the first damaged one on (a file truncated
        or changed), the layers are recomputed."""
        out = []
        for i, entry in enumerate(self.done):
            try:
                d = self.layout.read_json(self.layout.partial_layer(i, "json").relative_to(self.dir).as_posix())
                arrays = self.layout.read_arrays(self.layout.partial_layer(i, "npz"))
                layer = Layer.from_json(d, f"partial layer {i}")
                if layer.name != entry["name"] or not arrays:
                    raise NeurFlowError("circuit", f"layer {entry['name']} with its arrays", layer.name)
            except NeurFlowError as exc:
                log.warning(
                    "partial layer %d (%s) in %s is damaged (%s); recomputing from it", i, entry["name"], self.dir, exc
                )
                self.done = self.done[:i]
                break
            out.append((layer, arrays))
        if out:
            log.info("resuming: %d layer(s) already done in %s", len(out), self.dir)
        return out

    def finish(self, circuit: Circuit, pool=None, thumbnails: dict | None = None) -> None:
        """Write the finished run: the crop thumbnails (``thumbnails`` {crop: PNG bytes}, or made
        from ``pool`` for every display exemplar), the arrays, ``circuit.json``, then the manifest
        (last: the directory is complete only now)."""
        if thumbnails is None and pool is not None:
            shown = sorted(
                {
                    c
                    for l in circuit.layers
                    for n in l.nodes.values()
                    for s in n.sub_concepts
                    for c in s.display_exemplars
                }
            )
            thumbnails = make_thumbnails(pool, [c for c in shown if not self.layout.crop(c).exists()])
        with writing("out", self.dir):
            for idx, png in (thumbnails or {}).items():
                if not self.layout.crop(idx).exists():
                    atomic_write(self.layout.crop(idx), png)
            write_npz(self.layout.arrays, dict(circuit.arrays))
            self.layout.write_circuit(circuit, self.digest)
            self._manifest(True)
        shutil.rmtree(self.layout.partial, ignore_errors=True)
        self.release()
