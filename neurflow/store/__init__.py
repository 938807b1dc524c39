"""The artifact on disk: ``circuit.json`` (schema in docs/artifact.md), ``arrays.npz`` and crop
thumbnails.  ``files``: atomic writes; ``lock``: the directory's OS lock; ``identity``: the
hashes that identify a run; ``layout``: where everything lies in a run directory (``RunDir``),
read strictly; ``runstore``: saving a run layer by layer, resuming it, one process at a time
(``RunStore``); ``thumbnails``: the crop PNGs; ``trust``: the model factories this user ran into
which directory (reopened without ``--trust-model-spec``)."""

from .files import atomic_write, write_json, write_npz, writing
from .identity import hash_tensors, model_hash, run_hash
from .layout import LOCK, MANIFEST, SCHEMA, SCHEMA_VERSION, DamagedRun, RunDir, load
from .lock import DirLock
from .runstore import RunStore
from .thumbnails import THUMB, display_range, thumbnails, to_uint8

__all__ = [
    "LOCK",
    "MANIFEST",
    "SCHEMA",
    "SCHEMA_VERSION",
    "THUMB",
    "DamagedRun",
    "DirLock",
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
    "writing",
]
