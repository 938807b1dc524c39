"""``hf:DIR_OR_NAME[:SPLIT]``: a Hugging Face ``datasets`` dataset, read locally, never from the network.

``DIR_OR_NAME`` is a directory written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a
local ``load_dataset`` path (a folder of data files), or a name in the local cache (``load_dataset``
with ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set: an uncached name fails with one line).  The
split: ``SPLIT`` when given, else the only one, else ``validation``, ``test``, ``train`` in that
order.  The image column is the first feature of type ``datasets.Image`` (else a column named
``image`` or ``img``), the label column the first ``ClassLabel`` (else ``label`` or ``labels``),
each overridable (``--image-column``, ``--label-column``); class names come from the
``ClassLabel``.  Images are decoded when the run asks for them; the identity is the dataset's own
fingerprint with the split, columns, transform and channels.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..errors import NeurFlowError
from .stream import ImageSource, Unreadable

SPLIT_ORDER = ("validation", "test", "train")
IMAGE_NAMES, LABEL_NAMES = ("image", "img"), ("label", "labels")


def _datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise NeurFlowError(
            "data", "the datasets package for hf: data", "not installed", "pip install 'neurflow[hf]'"
        ) from None
    return datasets


def open_split(spec: str):
    """(datasets.Dataset, split name) of ``DIR_OR_NAME[:SPLIT]``."""
    ds_mod = _datasets()
    name, split = spec, None
    if ":" in spec and not os.path.exists(spec):
        name, _, split = spec.rpartition(":")
    try:
        if os.path.isdir(name) and any(
            os.path.exists(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json", "dataset_info.json")
        ):
            found = ds_mod.load_from_disk(name)
        else:
            found = ds_mod.load_dataset(name, split=split) if split else ds_mod.load_dataset(name)
    except NeurFlowError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever datasets raises, as one line
        raise NeurFlowError(
            "data",
            "hf:DIR_OR_NAME[:SPLIT], a local dataset (save_to_disk, data files, or the local cache)",
            f"hf:{spec}",
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
            " (hf: data is read offline; download it first where you have the network)",
        ) from None
    if isinstance(found, ds_mod.DatasetDict):
        splits = list(found)
        chosen = split or (splits[0] if len(splits) == 1 else next((s for s in SPLIT_ORDER if s in found), None))
        if chosen not in found:
            raise NeurFlowError(
                "data", f"a split of hf:{name}", split or "none named", f"its splits: {', '.join(splits)}"
            )
        return found[chosen], chosen
    return found, split or str(getattr(found, "split", "") or "")


def columns(ds, image_column: str | None, label_column: str | None) -> tuple[str, str | None]:
    """(image column, label column or None) of ``ds``, detected or as given."""
    ds_mod = _datasets()
    feats = ds.features
    names = list(feats)
    if image_column is None:
        image_column = next((c for c in names if isinstance(feats[c], ds_mod.Image)), None)
        image_column = image_column or next((c for c in IMAGE_NAMES if c in feats), None)
    if image_column is None or image_column not in feats:
        raise NeurFlowError(
            "image_column",
            "a column of images",
            image_column,
            f"the dataset's columns: {', '.join(f'{c} ({type(feats[c]).__name__})' for c in names)}",
        )
    if label_column is None:
        label_column = next((c for c in names if isinstance(feats[c], ds_mod.ClassLabel)), None)
        label_column = label_column or next((c for c in LABEL_NAMES if c in feats), None)
    elif label_column not in feats:
        raise NeurFlowError("label_column", "a column of the dataset", label_column, f"its columns: {', '.join(names)}")
    return image_column, label_column


class HFImages(ImageSource):
    """The images of one column of a ``datasets.Dataset``, prepared by ``prepare(PIL image)``."""

    def __init__(self, ds, image_column: str, labels, prepare: Callable, how: str, split: str):
        super().__init__()
        self.ds, self.column, self.labels, self.prepare = (
            ds.select_columns([image_column]),
            image_column,
            labels,
            prepare,
        )
        self.key = f"hf:{getattr(ds, '_fingerprint', '')}|{split}|{image_column}|{how}"

    def __len__(self) -> int:
        return len(self.ds)

    def read(self, index: int) -> torch.Tensor:
        try:
            img = self.ds[int(index)][self.column]
        except Exception as exc:  # noqa: BLE001 - an undecodable image in the arrow table
            raise Unreadable(f"{type(exc).__name__}: {exc}") from None
        if img is None or not hasattr(img, "convert"):
            raise Unreadable(f"not an image ({type(img).__name__})")
        return self.prepare(img)

    def identity(self) -> str:
        return self.key

    def cache_key(self) -> str:
        return self.key

    def describe(self) -> str:
        return f"a Hugging Face dataset of {len(self)} rows"

    def name_of(self, index: int) -> str:
        return f"row {index}"


def class_names(ds, label_column: str | None) -> list | None:
    feat = ds.features.get(label_column) if label_column else None
    return list(feat.names) if feat is not None and hasattr(feat, "names") else None
