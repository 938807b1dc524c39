"""``timm:NAME`` - the image architectures of timm (``pip install 'neurflow[timm]'``).

* ``timm:NAME`` - ``timm.create_model(NAME, pretrained=False)``: random weights, drawn under
  ``load_model``'s seed; ``weights=FILE`` (``--weights FILE``) loads a local state dict on top;
* ``timm:NAME@pretrained`` - timm's own pretrained weights, taken from the local cache only
  (Hugging Face hub cache, or torch hub's for the older URL weights): the hub is put in offline
  mode (``HF_HUB_OFFLINE=1``) and downloads are refused, so nothing is ever downloaded and a
  model whose weights are not cached fails with one line.  ``NAME`` may carry timm's pretrained
  tag (``timm:resnet18.a1_in1k@pretrained``).

A 1000-class ImageNet-1k model gets ImageNet's class names (``torchvision.imagenet_class_names``,
the same list as ``torchvision:`` models).  The registration is a plugin
(``register``, entry point ``neurflow.schemes``); timm itself is imported only when a ``timm:``
spec is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType

from ..errors import NeurFlowError, unknown_name
from .schemes import LoadedModel, register_model_scheme
from .torchvision import imagenet_class_names

HINT = "pip install 'neurflow[timm]'"
PRETRAINED = "pretrained"  # timm:NAME@pretrained


def register() -> None:
    register_model_scheme(
        "timm",
        load_timm,
        "timm:NAME - a timm architecture, random weights unless a weights file "
        f"(state dict) is given; timm:NAME@{PRETRAINED}: timm's pretrained "
        "weights from the local cache, never downloaded",
    )


def _timm():
    try:
        import timm
    except ImportError:
        raise NeurFlowError("model", "timm installed for timm:NAME", "timm not installed", HINT) from None
    return timm


class _DownloadRefused(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise _DownloadRefused("not in the local cache (neurflow never downloads weights)")


def _optional_module(name: str) -> ModuleType | None:
    """The module ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@contextlib.contextmanager
def _offline():
    """Hugging Face hub in offline mode and every download function timm reaches refused."""
    patches = []

    def patch(module, attr, value):
        if module is not None and hasattr(module, attr):
            patches.append((module, attr, getattr(module, attr)))
            setattr(module, attr, value)

    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        hf_constants = _optional_module("huggingface_hub.constants")
        import torch.hub

        timm_hub = _optional_module("timm.models._hub")
        patch(hf_constants, "HF_HUB_OFFLINE", True)
        patch(torch.hub, "download_url_to_file", _refuse)
        patch(timm_hub, "download_url_to_file", _refuse)
        yield
    finally:
        for module, attr, value in reversed(patches):
            setattr(module, attr, value)
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def load_timm(name: str):
    """The ``timm:`` scheme's loader: ``name`` is what follows ``timm:``."""
    base, at, tag = name.partition("@")
    spec = f"timm:{name}"
    if at and tag != PRETRAINED:
        raise NeurFlowError("model", f"timm:NAME or timm:NAME@{PRETRAINED}", spec, f"unknown suffix @{tag}")
    timm = _timm()
    if not base or not timm.is_model(base):
        raise unknown_name(
            "model", f"timm:{base}", [f"timm:{n}" for n in timm.list_models()], "timm.list_models() lists the names"
        )
    if at:
        try:
            with _offline():
                model = timm.create_model(base, pretrained=True)
        except Exception as exc:  # noqa: BLE001
            kind = type(exc).__name__
            if isinstance(exc, _DownloadRefused) or "LocalEntryNotFound" in kind or "Offline" in kind:
                why = "not in the local cache"
            else:
                why = f"{kind}: " + (str(exc).strip().splitlines() or [""])[0][:120]
            raise NeurFlowError(
                "model",
                f"timm's pretrained weights of {base} in the local cache",
                spec,
                f"{why}; neurflow never downloads: fetch them once with timm.create_model("
                f"'{base}', pretrained=True) where there is network, or use timm:{base} with "
                "{p:weights} FILE",
            ) from None
    else:
        try:
            model = timm.create_model(base, pretrained=False)
        except Exception as exc:  # noqa: BLE001
            raise NeurFlowError(
                "model", "a timm model that builds", spec, f"{type(exc).__name__}: {str(exc).strip()[:160]}"
            ) from None
    return LoadedModel(model, spec, _class_names(model), None)


def _class_names(model) -> list | None:
    if getattr(model, "num_classes", None) != 1000:
        return None
    try:
        from timm.data import infer_imagenet_subset

        if infer_imagenet_subset(model) != "imagenet-1k":
            return None
    except Exception:  # noqa: BLE001  (names are a convenience)
        return None
    return imagenet_class_names()  # the one list (torchvision's; timm's own first words repeat two)
