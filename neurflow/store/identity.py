"""A run's identity: hashes of tensors, of a model's weights and of the whole run."""

from __future__ import annotations

import hashlib
import json

import torch

from .._state import check_values


def _update(h, name: str, value) -> None:
    """Hash one state-dict entry: a tensor (dense, sparse or quantised: its integer values and
    quantisation parameters), a tuple or list of them (a quantised layer's packed parameters), or
    a plain value (a dtype) by its text."""
    if isinstance(value, (tuple, list)):
        h.update(f"{name}:{type(value).__name__}{len(value)}".encode())
        for i, item in enumerate(value):
            _update(h, f"{name}.{i}", item)
        return
    h.update(str(name).encode())
    if not isinstance(value, torch.Tensor):
        h.update(b"\0value\0" + repr(value).encode())
        return
    t = value.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        scheme = t.qscheme()
        h.update(str(scheme).encode())
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            h.update(repr((t.q_scale(), t.q_zero_point())).encode())
        else:
            _update(h, f"{name}.scales", t.q_per_channel_scales())
            _update(h, f"{name}.zero_points", t.q_per_channel_zero_points())
            h.update(str(t.q_per_channel_axis()).encode())
        h.update(str(t.dtype).encode())
        t = t.int_repr()
    t = t.contiguous().reshape(-1)
    h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def hash_tensors(items) -> str:
    h = hashlib.sha256()
    for name, t in items:
        _update(h, name, t)
    return h.hexdigest()


def model_hash(model: torch.nn.Module) -> str:
    """The weights a run computes with: floating tensors as float32 (runs compute in float32,
    ``_state.on_device``: a float16 model and its float32 copy are the same run; float32 models hash
    as they always did)."""
    check_values(model)
    state = sorted(model.state_dict().items())
    return hash_tensors(
        (k, v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in state
    )


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
