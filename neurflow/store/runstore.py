"""Saving and resuming one run in a directory under a lock (``RunStore``): partial runs saved
after every layer, resumed when the run hash matches, a finished one handed back.

Every file is written atomically (``files``); ``manifest.json`` is written last, so a directory is
never readable as complete unless it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

import numpy as np

from ..circuit import Circuit, Layer
from ..errors import NeurFlowError
from .files import TMP_PREFIX, atomic_write, write_json, write_npz
from .layout import LOCK, MANIFEST, SCHEMA, SCHEMA_VERSION, RunDir
from .thumbnails import thumbnails as make_thumbnails

log = logging.getLogger(__name__)


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
            if any(p.name not in (MANIFEST, LOCK) and not p.name.startswith(TMP_PREFIX) for p in self.dir.iterdir()):
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
        for tmp in self.dir.rglob(TMP_PREFIX + "*"):  # left by a write that was killed before its rename
            tmp.unlink(missing_ok=True)

    def _lock(self, directory) -> None:
        """Take the directory's lock, or refuse: another process (or another store of this one,
        not yet released) is writing this run."""
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
        for idx, png in (thumbnails or {}).items():
            if not self.layout.crop(idx).exists():
                atomic_write(self.layout.crop(idx), png)
        write_npz(self.layout.arrays, dict(circuit.arrays))
        self.layout.write_circuit(circuit, self.digest)
        self._manifest(True)
        shutil.rmtree(self.layout.partial, ignore_errors=True)
        self.release()
