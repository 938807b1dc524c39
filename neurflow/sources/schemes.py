"""Scheme registries of MODEL and DATA specs, and the plugins that fill them.

A spec ``NAME:REST`` whose ``NAME`` is a registered scheme is handed to that scheme's loader as
``REST``; every other spec falls through to the built-in forms of ``models.py`` / ``datasets.py``
(``package.module:factory``, ``file.py:factory``, a TorchScript file; an image folder, a ``.pt``
file).  Schemes are registered with ``register_model_scheme`` and ``register_data_scheme``
(here; the package exports both: ``neurflow.register_model_scheme``).  This module imports
no torch: the command line reads the schemes' help from it (``neurflow --help`` stays fast).

*Plugins* are callables without arguments that register schemes.  They are found once, on the
first look-up in either registry:

* entry points of the group ``neurflow.schemes`` (``[project.entry-points."neurflow.schemes"]``
  in a package's pyproject.toml: ``NAME = "package.module:register"``);
* ``BUILTIN_PLUGINS`` below, the plugins shipped with neurflow, loaded even when the package is
  not installed (a source checkout on ``sys.path``) or installed before an entry point was added.

A plugin must not import heavy or optional packages (torch included: register through this
module, not ``neurflow.sources.models``) when it registers: its loaders do that when they are called.
A plugin that fails to load is logged and skipped.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger(__name__)

GROUP = "neurflow.schemes"
# the plugins shipped with neurflow: entry point name -> "module:function" (the one place)
# (torchvision first: its scheme is listed first)
BUILTIN_PLUGINS = {
    "torchvision": "neurflow.sources.torchvision:register",
    "zoo": "neurflow.zoo:register",
    "timm": "neurflow.sources.timm_models:register",
}


@dataclass
class LoadedModel:
    """What a model scheme's loader returns: the module, the spec that reopens it, and what the
    model declares (class names; default layers, top down)."""

    model: Any  # an nn.Module (no torch here)
    spec: str
    class_names: list | None = None
    default_layers: list | None = None


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*$")
_lock = threading.RLock()
_plugins_state = {"loaded": False, "loading": False}


class Registry:
    """Schemes of one kind of spec: name -> (loader, help), in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._schemes: dict[str, tuple[Callable, str]] = {}

    def register(self, name: str, loader: Callable, help: str) -> None:  # noqa: A002
        if not isinstance(name, str) or not _NAME.match(name) or len(name) < 2:
            # one letter would shadow Windows drive letters (C:\...)
            raise ValueError(
                f"a {self.kind} scheme name is a word of 2+ letters, digits, '_', '-' or '+' (no ':'), got {name!r}"
            )
        if not callable(loader):
            raise TypeError(f"the loader of the {self.kind} scheme {name!r} must be callable")
        with _lock:
            self._schemes[name] = (loader, str(help))

    def unregister(self, name: str) -> None:
        with _lock:
            self._schemes.pop(name, None)

    def lookup(self, spec: str) -> tuple[Callable, str] | None:
        """(loader, rest) when ``spec`` is ``NAME:REST`` with a registered ``NAME``, else None."""
        load_plugins()
        name, colon, rest = spec.partition(":")
        if not colon:
            return None
        entry = self._schemes.get(name)
        return (entry[0], rest) if entry else None

    def names(self) -> list[str]:
        load_plugins()
        return list(self._schemes)

    def helps(self) -> dict[str, str]:
        load_plugins()
        return {name: h for name, (_, h) in self._schemes.items()}


def _entry_points() -> list[EntryPoint]:
    try:
        from importlib.metadata import entry_points

        return list(entry_points(group=GROUP))
    except Exception as exc:  # noqa: BLE001  (broken metadata must not break neurflow)
        log.debug("no %s entry points: %s", GROUP, exc)
        return []


def _call(name: str, load: Callable[[], Callable]) -> None:
    try:
        load()()
    except Exception as exc:  # noqa: BLE001
        log.warning("scheme plugin %r failed to load: %s: %s", name, type(exc).__name__, exc)


def _import_target(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_plugins() -> None:
    """Register the schemes of every plugin, once (later calls return at once)."""
    if _plugins_state["loaded"]:
        return
    with _lock:  # re-entrant: a plugin that looks a scheme up while registering gets what is there
        if _plugins_state["loaded"] or _plugins_state["loading"]:
            return
        _plugins_state["loading"] = True
        try:
            eps: dict[str, EntryPoint] = {}
            for found in _entry_points():
                eps.setdefault(found.name, found)
            for name, target in BUILTIN_PLUGINS.items():
                ep = eps.pop(name, None)
                if ep is not None and ep.value.replace(" ", "") == target:
                    _call(name, ep.load)
                else:  # not installed, or installed before the entry point existed
                    _call(name, functools.partial(_import_target, target))
                    if ep is not None:  # another package's plugin of the same name: it wins
                        _call(name, ep.load)
            for name in sorted(eps):
                _call(name, eps[name].load)
        finally:
            _plugins_state["loading"] = False
            _plugins_state["loaded"] = True


# -- the two registries ---------------------------------------------------------------------------
MODEL_SCHEMES = Registry("model")
DATA_SCHEMES = Registry("data")

# the forms that are not NAME:... schemes (tried in this order when no scheme matches)
MODEL_FALLBACKS = {
    "factory": "package.module:factory or path/file.py:factory - calls factory(), which returns an nn.Module",
    "torchscript": "FILE (TorchScript) - recognised and refused: torch.fx cannot slice TorchScript; "
    "load the Python model instead",
}
DATA_FALLBACKS = {
    "path": "FOLDER or FILE.pt - an image folder (one sub-folder per class, or flat) or a .pt file "
    "with an image tensor [N, 3, H, W] or a dict with 'images' and 'labels'",
    "wds": "wds:PATTERN - WebDataset tar shards, brace patterns as webdataset takes them "
    "(wds:data/train-{000..009}.tar): each sample's image, its label from a .cls member",
    "hf": "hf:DIR_OR_NAME[:SPLIT] - a Hugging Face datasets dataset, local only (save_to_disk, data files or "
    "the cache): image and label columns detected (--image-column, --label-column), class names from ClassLabel",
}


def register_model_scheme(name: str, loader: Callable, help: str) -> None:  # noqa: A002
    """Make ``NAME:REST`` model specs load through ``loader(REST)``.

    ``loader`` returns a ``LoadedModel`` (or an ``nn.Module``, whose ``class_names`` and
    ``default_layers`` attributes are read) and raises ``NeurFlowError("model", ...)`` for a
    name it does not know.  ``load_model`` draws its random initialisation under the seed, loads
    ``weights`` on top and puts the model in eval mode.  ``help`` is one line that starts with
    the spelling, e.g. ``"torchvision:NAME - ..."``.  Registering a name again replaces it."""
    MODEL_SCHEMES.register(name, loader, help)


def unregister_model_scheme(name: str) -> None:
    MODEL_SCHEMES.unregister(name)


def model_schemes() -> dict[str, str]:
    """{name: help} of every model spec form: the registered ``NAME:...`` schemes in
    registration order, then the fallback forms (``factory``, ``torchscript``), which are not
    prefixes.  Every help starts with the spelling of its spec."""
    return {**MODEL_SCHEMES.helps(), **MODEL_FALLBACKS}


def register_data_scheme(name: str, loader: Callable, help: str) -> None:  # noqa: A002
    """Make ``NAME:REST`` data specs load through ``loader(REST)``, which returns a ``Dataset``
    (and raises ``NeurFlowError("data", ...)`` for a name it does not know).  ``help`` is one
    line that starts with the spelling, e.g. ``"NAME:SET - ..."``.  Registering a name again
    replaces it."""
    DATA_SCHEMES.register(name, loader, help)


def unregister_data_scheme(name: str) -> None:
    DATA_SCHEMES.unregister(name)


def data_schemes() -> dict[str, str]:
    """{name: help} of every data spec form: the registered ``NAME:...`` schemes in
    registration order, then the fallback ``path``.  Every help starts with the spelling."""
    return {**DATA_SCHEMES.helps(), **DATA_FALLBACKS}
