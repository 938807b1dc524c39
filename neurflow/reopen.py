"""Reopen a finished run with its model and data, for the commands that need them again
(``debug``, ``audit``).

The run's ``circuit.json`` records the model spec, the weights file, the data spec and the
transform.  Each can be overridden (a run made from Python records only the model's class name);
when the run recorded a model hash, the model given must have the same weights, or the scores
would describe a model the circuit was not computed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .artifact import load, model_hash
from .circuit import Circuit
from .datasets import IMAGE_EXT, Dataset, imagenet_transform, load_data
from .errors import NeurFlowError


@dataclass
class Reopened:
    dir: Path
    circuit: Circuit
    model: torch.nn.Module | None = None
    class_names: list | None = None
    data: Dataset | None = None


def reopen(directory, model: str | None = None, weights: str | None = None, data: str | None = None,
           transform: str | None = None, need_data: bool = False, trust_checkpoint: bool = False) -> Reopened:
    from .models import load_model
    d = Path(directory)
    circuit = load(d)
    meta = circuit.meta
    spec = model or meta.get("model")
    if not spec or (model is None and ":" not in str(spec) and not Path(str(spec)).is_file()):
        raise NeurFlowError("--model", "the model spec of the run", spec,
                            "this run recorded no loadable model spec (made from Python?); pass --model [--weights]")
    loaded = load_model(spec, weights if model else (weights or meta.get("weights")), trust_checkpoint,
                        seed=int(circuit.settings.get("seed", 0)))
    recorded = meta.get("model_hash")
    if recorded and model_hash(loaded.model) != recorded:
        raise NeurFlowError("--model", "the model the run was computed with (same weights)", spec,
                            f"its weights differ from the run's (model hash {recorded[:12]}...); pass the run's "
                            "--model and --weights")
    out = Reopened(d, circuit, loaded.model, loaded.class_names or meta.get("class_names"))
    if need_data:
        spec_d = data or meta.get("data")
        if not spec_d or str(spec_d).startswith("tensor "):
            raise NeurFlowError("--data", "the data of the run", spec_d,
                                "this run recorded no data spec (made from Python?); pass --data")
        out.data = load_data(spec_d, transform if data else (transform or meta.get("transform")))
    return out


def read_image(path: str, circuit: Circuit) -> torch.Tensor:
    """An image file prepared like the run's inputs: the ImageNet preset when the run used it
    (image folders by default), else the pixels scaled to [0, 1], converted to the run's channel
    count and resized to its image size.  Returns [C, S, S]."""
    p = Path(path)
    if not p.is_file():
        raise NeurFlowError("--image", "an image file or an index into the run's data", path, "no such file")
    if p.suffix.lower() not in IMAGE_EXT:
        raise NeurFlowError("--image", "an image file (" + ", ".join(sorted(IMAGE_EXT)) + ")", path)
    meta = circuit.meta
    size = int(meta.get("image_size") or 224)
    channels = int(meta.get("image_channels") or 3)
    data = str(meta.get("data") or "")
    folder_run = bool(data) and Path(data).is_dir()
    preset = meta.get("transform") or ("imagenet" if folder_run or data == "zoo:photos" else "none")
    try:
        with Image.open(p) as im:
            if preset == "imagenet":
                x = imagenet_transform(im.convert("RGB"))
            else:
                im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
                x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
    except (UnidentifiedImageError, OSError) as exc:
        raise NeurFlowError("--image", "a readable image file", path, str(exc)[:160]) from None
    if x.shape[-1] != size:
        raise NeurFlowError("--image", f"an image that the run's transform makes {size} px", path,
                            f"it gives {x.shape[-1]} px")
    return x


def image_from_data(index: str, data: Dataset) -> torch.Tensor:
    i = int(index)
    n = data.images.shape[0]
    if not 0 <= i < n:
        raise NeurFlowError("--image", f"an index in 0..{n - 1} into the run's data", index)
    return data.images[i]
