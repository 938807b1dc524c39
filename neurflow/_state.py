"""Global and model state, set within a block and restored afterwards: the model's ``training``
and ``requires_grad`` flags (``preserved``), its device (``on_device``), torch's threads
(``threads``) and the arithmetic (``precision``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from .errors import NeurFlowError


@contextlib.contextmanager
def preserved(model: nn.Module, eval_mode: bool = True, freeze: bool = False) -> Iterator[nn.Module]:
    """Run with ``model`` in eval mode (and, with ``freeze``, its parameters' ``requires_grad``
    off: attribution needs gradients w.r.t. activations only, and autograd then keeps nothing
    for weight gradients); restore every ``training`` and ``requires_grad`` flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; a ``NeurFlowError`` naming ``device``
    otherwise (an unknown spelling, CUDA or MPS without one, ``cuda:3`` with fewer GPUs)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NeurFlowError("device", "a torch device such as cpu, cuda or cuda:1", device) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NeurFlowError("device", "a device this machine has", device, "torch sees no CUDA GPU; use cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise NeurFlowError(
                "device", f"cuda:0..cuda:{n - 1} ({n} CUDA device(s) visible)", device, "use one of them, or cpu"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise NeurFlowError("device", "a device this machine has", device, "torch sees no MPS device; use cpu")
    return dev


class on_device:
    """Within the block the model's parameters and buffers are on ``device``; afterwards every
    module holds its own tensor objects again, where they were: parameters (the same
    ``Parameter`` objects, with their data and grads) and buffers, put back by name
    (``Module._apply`` may replace both).  A device the machine lacks is refused (``check_device``)."""

    def __init__(self, model: nn.Module, device):
        self.model, self.device = model, check_device(device)

    def __enter__(self) -> nn.Module:
        dev = self.device
        self.params = [
            (mod, name, p, p.data, p.grad)
            for mod in self.model.modules()
            for name, p in mod._parameters.items()
            if p is not None and p.device != dev
        ]
        self.buffers = [
            (mod, name, b)
            for mod in self.model.modules()
            for name, b in mod._buffers.items()
            if b is not None and b.device != dev
        ]
        if self.params or self.buffers:
            self.model.to(dev)
        return self.model

    def __exit__(self, *exc) -> None:
        for mod, name, p, data, grad in self.params:
            mod._parameters[name] = p
            p.data = data
            p.grad = grad
        for mod, name, b in self.buffers:
            mod._buffers[name] = b


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` (default: ``available_cpus()``) within the block,
    restored afterwards.  More threads than the CPUs one may use make OpenMP's threads wait on
    each other (and spin) whenever another process competes for the cores."""
    before = torch.get_num_threads()
    n = n or available_cpus()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def precision(mode: str, device="cpu") -> Iterator[str]:
    """The arithmetic of the forwards and backwards within the block: ``fp32`` (exact: TF32 off,
    also for cuDNN's convolutions, which PyTorch lets use it by default on Ampere and later GPUs),
    ``tf32`` (TensorFloat-32 matmuls and convolutions where the hardware has them: Ampere and later
    GPUs) or ``bf16`` (bfloat16 autocast on the device).  Global switches are restored afterwards."""
    if mode in ("fp32", "tf32"):  # fp32 switches TF32 off: PyTorch's default lets cuDNN convolutions use it
        before = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision(),
        )
        on = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
        torch.set_float32_matmul_precision("high" if on else "highest")
        try:
            yield mode
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
            torch.set_float32_matmul_precision(before[2])
        return
    if mode == "bf16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield mode
        return
    raise NeurFlowError("precision", "fp32, tf32 or bf16", mode)


@contextlib.contextmanager
def running(model: nn.Module, device, n_threads: int | None, seed: int) -> Iterator[nn.Module]:
    """The model as a run uses it: in eval mode with its parameters frozen (``preserved``), on
    ``device``, torch's threads set, the seed drawn without touching the caller's global
    generator; all of it restored afterwards."""
    with (
        torch.random.fork_rng(devices=[]),
        preserved(model, freeze=True),
        on_device(model, device),
        threads(n_threads),
    ):
        torch.manual_seed(seed)
        yield model
