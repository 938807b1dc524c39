"""The artifact on disk: ``circuit.json`` (schema in docs/artifact.md), ``arrays.npz`` and crop
thumbnails.  ``files``: atomic writes; ``identity``: the hashes that identify a run; ``layout``:
where everything lies in a run directory (``RunDir``); ``runstore``: saving a run layer by layer,
resuming it, one process at a time (``RunStore``); ``thumbnails``: the crop PNGs."""

from .files import atomic_write, write_json, write_npz
from .identity import hash_tensors, model_hash, run_hash
from .layout import LOCK, MANIFEST, SCHEMA, SCHEMA_VERSION, RunDir, load
from .runstore import RunStore
from .thumbnails import THUMB, display_range, thumbnails, to_uint8

__all__ = [
    "LOCK",
    "MANIFEST",
    "SCHEMA",
    "SCHEMA_VERSION",
    "THUMB",
    "RunDir",
    "RunStore",
    "atomic_write",
    "display_range",
    "hash_tensors",
    "load",
    "model_hash",
    "run_hash",
    "thumbnails",
    "to_uint8",
    "write_json",
    "write_npz",
]
