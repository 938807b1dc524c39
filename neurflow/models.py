"""Resolve a MODEL spec into an ``nn.Module``.

* ``torchvision:NAME`` - random weights, or ``weights=FILE`` (a state dict, loaded with
  ``weights_only=True``);
* ``package.module:factory`` or ``path/to/file.py:factory`` - calls ``factory()``;
* a TorchScript file is recognised and refused with a clear message: torch.fx cannot slice
  TorchScript, and a scripted module accepts no forward hooks, so there is no faithful way to
  cut it into segments.

A model may declare its class names in a ``class_names`` attribute (list of str).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import NeurFlowError, unknown_name

# the paper's layer lists (method.md section 1), top down, lowest input layer last
PAPER_LAYERS = {
    "resnet50": ["fc", "layer4.2", "layer4.1", "layer4.0", "layer3.5", "layer3.4", "layer3.3", "layer3.2",
                 "layer3.1", "layer3.0", "layer2.3"],
    "googlenet": ["fc", "inception5b", "inception5a", "inception4e", "inception4d", "inception4c",
                  "inception4b", "inception4a", "inception3b", "inception3a", "maxpool2"],
    "alexnet": ["classifier.6", "classifier.5", "classifier.2", "features.12", "features.9", "features.7",
                "features.5", "features.2"],
}


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    class_names: list | None = None
    default_layers: list | None = None


def _load_state(path: str, trust: bool = False):
    if not os.path.isfile(path):
        raise NeurFlowError("--weights", "an existing checkpoint file", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if not trust and ("weights_only" in str(exc) or "Unpickl" in str(exc)):
            raise NeurFlowError("--weights", "a checkpoint loadable with weights_only=True (tensors only)", path,
                                "it needs pickle, which can run arbitrary code; re-save it as a state_dict, or "
                                "pass --trust-checkpoint if you trust its source") from None
        raise NeurFlowError("--weights", "a readable PyTorch checkpoint", path, first) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    return state


def load_model(spec: str, weights: str | None = None, trust_checkpoint: bool = False, seed: int = 0) -> LoadedModel:
    """Random initialisations are drawn under ``seed`` (the same spec gives the same model)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _load_model(spec, weights, trust_checkpoint)


def _load_model(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    if not isinstance(spec, str) or not spec:
        raise NeurFlowError("--model", "a model spec (zoo:NAME, torchvision:NAME, package.module:factory or "
                            "file.py:factory)", spec)
    if spec.startswith("zoo:") and not weights:
        from . import zoo
        return zoo.load_model(spec[4:])
    if spec.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1])
    elif os.path.isfile(spec):
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception:  # noqa: BLE001
            raise NeurFlowError("--model", "a TorchScript file", spec,
                                "for a state dict use torchvision:NAME --weights FILE") from None
        loaded = LoadedModel(model, spec, getattr(model, "class_names", None))
    elif ":" in spec:
        loaded = _factory(spec)
    else:
        raise NeurFlowError("--model", "torchvision:NAME, package.module:factory, path/file.py:factory or a "
                            "TorchScript file", spec, "no such file, and no ':' in the spec")
    if weights:
        state = _load_state(weights, trust_checkpoint)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        try:
            loaded.model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise NeurFlowError("--weights", f"a state dict matching {spec}", weights,
                                str(exc).strip().splitlines()[0][:200]) from None
    loaded.model.eval()
    return loaded


def _torchvision(name: str) -> LoadedModel:
    try:
        import torchvision
    except ImportError:
        raise NeurFlowError("--model", "torchvision installed for torchvision:NAME", name,
                            "pip install 'neurflow[torchvision]'") from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown_name("--model", f"torchvision:{name}", [f"torchvision:{n}" for n in names])
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return LoadedModel(model, f"torchvision:{name}", None, PAPER_LAYERS.get(name))


def _factory(spec: str) -> LoadedModel:
    where, func = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise NeurFlowError("--model", "path/file.py:factory with an existing file", spec)
        mod_name = f"_neurflow_user_{path.stem}"
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        try:
            s.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            raise NeurFlowError("--model", "a Python file that imports cleanly", spec,
                                f"{type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise NeurFlowError("--model", "an importable module in package.module:factory", spec, str(exc)) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name("--model", func, public, f"no callable {func!r} in {where}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise NeurFlowError("--model", "a factory returning an nn.Module", spec, type(model).__name__)
    return LoadedModel(model, spec, getattr(model, "class_names", None), getattr(model, "default_layers", None))
