"""A run's identity: hashes of tensors, of a model's weights and of the whole run."""

from __future__ import annotations

import hashlib
import json

import torch


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
