"""What a neuron is: a channel of a layer output, its response (spatial or token mean), its
width, and masks that zero channels.

A *neuron* is a channel: dimension 1 of a ``[B, C, H, W]`` or ``[B, C]`` output, the last
dimension of a ``[B, T, D]`` token output (``channel_axis``).  A channels-last ``[B, H, W, C]``
layer (torchvision's Swin) reaches these functions already permuted to ``[B, C, H, W]`` by the
``LayerGraph`` (``slicing.axes``).  Its *response* to an input is the spatial (or token) mean of
that channel.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import NeurFlowError


def channel_axis(t: torch.Tensor) -> int:
    """The axis that holds the neurons: the last one of a token output ``[B, T, D]``, else 1."""
    return -1 if t.ndim == 3 else 1


def width(t: torch.Tensor) -> int:
    """Number of neurons (channels) of a layer output ``t``."""
    return int(t.shape[channel_axis(t)])


def response(t: torch.Tensor) -> torch.Tensor:
    """A neuron's response: spatial mean of a channel ([B, C, H, W]), the value itself
    ([B, C]), or the mean over tokens per hidden unit ([B, T, D]).  Returns [B, C]."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    if t.ndim == 2:
        return t
    raise NeurFlowError(
        "layers", "layers whose output is [B, C], [B, T, D] or [B, C, H, W]", f"an output of shape {tuple(t.shape)}"
    )


def channel_mask(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[M, C] masks (1 keep, 0 zero) applied to ``x`` [B, C, ...] (or [B, T, C]) -> [M * B, ...]."""
    if x.ndim == 3:
        view = masks[:, None, None, :]
    else:
        view = masks.view(masks.shape[0], 1, masks.shape[1], *([1] * (x.ndim - 2)))
    return (x.unsqueeze(0) * view).flatten(0, 1)


def masks_for(sets: Sequence, c_low: int, device="cpu") -> torch.Tensor:
    """[len(sets), c_low] masks that zero the channels of each set."""
    m = torch.ones(len(sets), c_low, device=device)
    for i, s in enumerate(sets):
        m[i, torch.as_tensor(list(s), dtype=torch.long, device=device)] = 0
    return m
