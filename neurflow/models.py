"""Resolve a MODEL spec into an ``nn.Module``, through a registry of schemes.

* ``SCHEME:NAME`` - a registered scheme (``register_model_scheme``); built in:
  ``torchvision:NAME``, a torchvision architecture with random weights; plugins add more
  (``neurflow.schemes``: entry points of the group ``neurflow.schemes``);
* ``package.module:factory`` or ``path/to/file.py:factory`` - calls ``factory()`` (a spec with
  ':' whose prefix is not a registered scheme);
* a TorchScript file is recognised and refused with a clear message: torch.fx cannot slice
  TorchScript, and a scripted module accepts no forward hooks, so there is no faithful way to
  cut it into segments.

Whatever the scheme, ``weights=FILE`` then loads a state dict (``weights_only=True``) into the
model, and the model is put in eval mode.  A model may declare its class names in a
``class_names`` attribute (list of str) and its default layers in ``default_layers``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import NeurFlowError, close_matches, unknown_name
from .schemes import Registry

# the paper's layer lists (method.md section 1), top down, lowest input layer last
PAPER_LAYERS = {
    "resnet50": [
        "fc",
        "layer4.2",
        "layer4.1",
        "layer4.0",
        "layer3.5",
        "layer3.4",
        "layer3.3",
        "layer3.2",
        "layer3.1",
        "layer3.0",
        "layer2.3",
    ],
    "googlenet": [
        "fc",
        "inception5b",
        "inception5a",
        "inception4e",
        "inception4d",
        "inception4c",
        "inception4b",
        "inception4a",
        "inception3b",
        "inception3a",
        "maxpool2",
    ],
    "alexnet": [
        "classifier.6",
        "classifier.5",
        "classifier.2",
        "features.12",
        "features.9",
        "features.7",
        "features.5",
        "features.2",
    ],
}


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    class_names: list | None = None
    default_layers: list | None = None


_SCHEMES = Registry("model")
# the forms that are not NAME:... schemes (tried in this order when no scheme matches)
_FALLBACKS = {
    "factory": "package.module:factory or path/file.py:factory - calls factory(), which returns an nn.Module",
    "torchscript": "FILE (TorchScript) - recognised and refused: torch.fx cannot slice TorchScript; "
    "load the Python model instead",
}


def register_model_scheme(name: str, loader: Callable[[str], "LoadedModel | nn.Module"], help: str) -> None:  # noqa: A002
    """Make ``NAME:REST`` model specs load through ``loader(REST)``.

    ``loader`` returns a ``LoadedModel`` (or an ``nn.Module``, whose ``class_names`` and
    ``default_layers`` attributes are read) and raises ``NeurFlowError("model", ...)`` for a
    name it does not know.  ``load_model`` draws its random initialisation under the seed, loads
    ``weights`` on top and puts the model in eval mode.  ``help`` is one line that starts with
    the spelling, e.g. ``"torchvision:NAME - ..."``.  Registering a name again replaces it."""
    _SCHEMES.register(name, loader, help)


def unregister_model_scheme(name: str) -> None:
    _SCHEMES.unregister(name)


def model_schemes() -> dict[str, str]:
    """{name: help} of every model spec form: the registered ``NAME:...`` schemes in
    registration order, then the fallback forms (``factory``, ``torchscript``), which are not
    prefixes.  Every help starts with the spelling of its spec."""
    return {**_SCHEMES.helps(), **_FALLBACKS}


def _spec_forms() -> str:
    return ", ".join([f"{n}:NAME" for n in _SCHEMES.names()] + ["package.module:factory", "file.py:factory"])


def _load_state(path: str, trust: bool = False):
    if not os.path.isfile(path):
        raise NeurFlowError("weights", "an existing checkpoint file", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if not trust and ("weights_only" in str(exc) or "Unpickl" in str(exc)):
            raise NeurFlowError(
                "weights",
                "a checkpoint loadable with weights_only=True (tensors only)",
                path,
                "it needs pickle, which can run arbitrary code; re-save it as a state_dict, or "
                "pass {p:trust_checkpoint} if you trust its source",
            ) from None
        raise NeurFlowError("weights", "a readable PyTorch checkpoint", path, first) from None
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
        raise NeurFlowError("model", f"a model spec ({_spec_forms()})", spec)
    found = _SCHEMES.lookup(spec)
    if found is not None:
        loader, rest = found
        loaded = _as_loaded(loader(rest), spec)
    elif os.path.isfile(spec):
        loaded = _torchscript(spec)
    elif ":" in spec:
        loaded = _factory(spec)
    else:
        raise NeurFlowError(
            "model",
            f"a model spec ({_spec_forms()}) or a TorchScript file",
            spec,
            "no such file, and no ':' in the spec",
        )
    if weights:
        state = _load_state(weights, trust_checkpoint)
        if isinstance(state, nn.Module):
            state = state.state_dict()
        try:
            loaded.model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise NeurFlowError(
                "weights", f"a state dict matching {spec}", weights, str(exc).strip().splitlines()[0][:200]
            ) from None
    loaded.model.eval()
    return loaded


def _as_loaded(obj, spec: str) -> LoadedModel:
    if isinstance(obj, LoadedModel) and isinstance(obj.model, nn.Module):
        return obj
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, spec, getattr(obj, "class_names", None), getattr(obj, "default_layers", None))
    raise NeurFlowError("model", "a scheme loader returning a LoadedModel or an nn.Module", spec, type(obj).__name__)


def _torchscript(spec: str) -> LoadedModel:
    try:
        model = torch.jit.load(spec, map_location="cpu")
    except Exception:  # noqa: BLE001
        raise NeurFlowError(
            "model",
            "a TorchScript file",
            spec,
            "for a state dict use torchvision:NAME (or another scheme) with {p:weights} FILE",
        ) from None
    return LoadedModel(model, spec, getattr(model, "class_names", None))


def _torchvision(name: str) -> LoadedModel:
    """``torchvision:NAME``: the architecture with random weights (weights=None)."""
    try:
        import torchvision
    except ImportError:
        raise NeurFlowError(
            "model", "torchvision installed for torchvision:NAME", name, "pip install 'neurflow[torchvision]'"
        ) from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown_name("model", f"torchvision:{name}", [f"torchvision:{n}" for n in names])
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    return LoadedModel(model, f"torchvision:{name}", None, PAPER_LAYERS.get(name))


def _factory(spec: str) -> LoadedModel:
    where, func = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise NeurFlowError("model", "path/file.py:factory with an existing file", spec)
        mod_name = f"_neurflow_user_{path.stem}"
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        try:
            s.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            raise NeurFlowError(
                "model", "a Python file that imports cleanly", spec, f"{type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            if getattr(exc, "name", None) == where and "." not in where:
                # a word before ':' that is neither a scheme nor a module: most likely a mistyped scheme
                schemes = _SCHEMES.names()
                near = close_matches(where, schemes)
                hint = (
                    f"{where}: is neither a registered scheme ({', '.join(s + ':' for s in schemes)}) nor an "
                    f"importable module"
                )
                if near:
                    hint += "; did you mean " + ", ".join(f"{n}:{spec.split(':', 1)[1]}" for n in near) + "?"
                raise NeurFlowError("model", f"a model spec ({_spec_forms()})", spec, hint) from None
            raise NeurFlowError("model", "an importable module in package.module:factory", spec, str(exc)) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name("model", func, public, f"no callable {func!r} in {where}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise NeurFlowError("model", "a factory returning an nn.Module", spec, type(model).__name__)
    return LoadedModel(model, spec, getattr(model, "class_names", None), getattr(model, "default_layers", None))


register_model_scheme(
    "torchvision",
    _torchvision,
    "torchvision:NAME - a torchvision architecture, random weights unless a weights file (state dict) is given",
)
