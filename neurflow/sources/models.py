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
``class_names`` attribute (list of str) and its default layers in ``default_layers`` (list of
str, class layer first); anything else there is a one-line error.  ``input_channels`` reads the
channels a model's input has.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import NeurFlowError, close_matches, unknown_name
from .schemes import MODEL_SCHEMES, LoadedModel

# the registry and its functions live in schemes.py (no torch there: `neurflow --help` reads it)
_SCHEMES = MODEL_SCHEMES


def _spec_forms() -> str:
    return ", ".join([f"{n}:NAME" for n in _SCHEMES.names()] + ["package.module:factory", "file.py:factory"])


def _checkpoint_kind(path: str) -> str:
    """What ``torch.save`` may have written: "zip" (the default format), "pickle" (the legacy one),
    "broken zip" (a zip header without a readable end: truncated) or "other" (not a checkpoint)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise NeurFlowError("weights", "a readable checkpoint file", path, exc.strerror or str(exc)) from None
    if head.startswith(b"PK\x03\x04"):
        return "zip" if zipfile.is_zipfile(path) else "broken zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode
        return "pickle"
    return "other"


_NOT_A_CHECKPOINT = "truncated or not a PyTorch file"


def _load_state(path: str, trust: bool = False):
    if not os.path.isfile(path):
        raise NeurFlowError("weights", "an existing checkpoint file", path)
    kind = _checkpoint_kind(path)
    if kind not in ("zip", "pickle"):
        # neither torch.save format: --trust-checkpoint cannot help, do not suggest it
        raise NeurFlowError("weights", "a PyTorch checkpoint written by torch.save", path, _NOT_A_CHECKPOINT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip()
        broken = isinstance(exc, (EOFError, OSError)) or "PytorchStreamReader" in text or "inline_container" in text
        if broken or (kind == "pickle" and "truncated" in text):
            raise NeurFlowError(
                "weights", "a PyTorch checkpoint written by torch.save", path, _NOT_A_CHECKPOINT
            ) from None
        if not trust and ("weights_only" in text or "Unpickl" in text):
            raise NeurFlowError(
                "weights",
                "a checkpoint loadable with weights_only=True (tensors only)",
                path,
                "it needs pickle, which can run arbitrary code; re-save it as a state_dict, or "
                "pass {p:trust_checkpoint} if you trust its source",
            ) from None
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise NeurFlowError("weights", "a readable PyTorch checkpoint", path, first) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    return state


def _some(names: list, n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _state_mismatch(model: nn.Module, state) -> str:
    """Why ``state`` does not fit ``model``: the first missing and unexpected keys and shape mismatches."""
    if not isinstance(state, dict):
        return f"the checkpoint holds a {type(state).__name__}, not a state dict"
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [str(k) for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_some(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model): {_some(shapes)}")
    prefix = "module."
    if (
        unexpected
        and all(k.startswith(prefix) for k in unexpected)
        and any(k[len(prefix) :] in own for k in unexpected)
    ):
        parts.append("the keys start with 'module.' (saved from DataParallel): strip it")
    return "; ".join(parts) if parts else ""


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
            why = _state_mismatch(loaded.model, state) or str(exc).strip().splitlines()[0][:200]
            raise NeurFlowError("weights", f"a state dict matching {spec}", weights, why) from None
    loaded.model.eval()
    loaded.class_names = _declared(loaded.class_names, "class_names", spec)
    loaded.default_layers = _declared(loaded.default_layers, "default_layers", spec)
    return loaded


def _declared(value, what: str, spec: str) -> list | None:
    """A model's declared ``class_names`` or ``default_layers`` as a list of str (None: none
    declared); a single string (read letter by letter otherwise), a number or a list of other
    things is a one-line error."""
    if value is None:
        return None
    sequence = isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))
    items = list(value) if sequence else None  # a list, a tuple, an array of str
    if items is None or not all(isinstance(v, str) for v in items):
        kind = type(value).__name__ if items is None else "a list with non-str items"
        example = "['head', 'block3', 'block2']" if what == "default_layers" else "['cat', 'dog']"
        raise NeurFlowError(
            "model", f"{what} declared as a list of str, e.g. {example}", spec, f"{what} is {value!r:.60} ({kind})"
        )
    return [str(v) for v in items] or None


# the modules whose input channels are the model's, when one of them is the first of the model
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def input_channels(model: nn.Module) -> int | None:
    """The channels the model's input has: the ``in_channels`` of its first convolution, when
    that comes before any linear layer in the order the model declares its modules (the order
    its forward almost always calls them in).  None when it does not say (a linear layer first:
    its input is flattened; no convolution; a lazy one not yet built)."""
    for m in model.modules():
        if isinstance(m, _CONVS):
            return int(m.in_channels) or None
        if isinstance(m, nn.Linear):
            return None
    return None


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


def _factory(spec: str) -> LoadedModel:
    where, func = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise NeurFlowError("model", "path/file.py:factory with an existing file", spec)
        mod_name = f"_neurflow_user_{path.stem}"
        s = importlib.util.spec_from_file_location(mod_name, path)
        if s is None or s.loader is None:  # not for a .py path: it always gets a source loader
            raise NeurFlowError("model", "a Python file that imports cleanly", spec, "no loader for this file")
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
        except Exception as exc:  # noqa: BLE001 - the module's own code failed while importing
            raise NeurFlowError(
                "model", "a module that imports cleanly", spec, f"{type(exc).__name__}: {str(exc)[:160]}"
            ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name("model", func, public, f"no callable {func!r} in {where}")
    try:
        model = fn()
    except NeurFlowError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line, not a traceback
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise NeurFlowError(
            "model", "a factory that returns an nn.Module", spec, f"{func}() raised {type(exc).__name__}: {text}"
        ) from None
    if not isinstance(model, nn.Module):
        raise NeurFlowError("model", "a factory returning an nn.Module", spec, type(model).__name__)
    return LoadedModel(model, spec, getattr(model, "class_names", None), getattr(model, "default_layers", None))
