"""Global and model state, set within a block and restored afterwards: the model's ``training``
and ``requires_grad`` flags (``preserved``), its device and float32 arithmetic (``on_device``),
torch's threads (``threads``) and the arithmetic (``precision``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch
from torch import nn

from .errors import NeurFlowError

log = logging.getLogger(__name__)


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
    elif dev.type == "meta":
        raise NeurFlowError(
            "device", "a device that computes values (cpu, cuda, mps)", device, "meta tensors hold shapes, no values"
        )
    return dev


def _first(names: list, n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_values(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers lie on the meta device (shapes without values:
    built under ``torch.device("meta")`` and never given weights)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise NeurFlowError(
            "model",
            "parameters and buffers with values",
            f"{len(meta)} of {len(tensors)} on the meta device ({_first(meta)})",
            "the model was built on the meta device and never given weights: build it on the cpu, or "
            "materialise it (to_empty() and load_state_dict) before handing it over",
        )


def check_gradients(model: nn.Module) -> None:
    """Refuse a quantised model: integrated gradients differentiate the model, and a quantised
    module (``torch.ao.nn.quantized``: ``quantize_dynamic``, ``convert``) has no gradients."""
    found: dict[str, str] = {}
    for name, m in model.named_modules():
        if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")) and not any(
            name.startswith(f"{outer}.") for outer in found
        ):  # a quantised module's own parts (its packed parameters) are not named again
            found[name] = type(m).__name__
    quantised = [f"{name or 'the model'} (a quantised {kind})" for name, kind in found.items()]
    if quantised:
        raise NeurFlowError(
            "model",
            "a model with gradients (integrated gradients differentiate it)",
            f"{len(quantised)} quantised module(s): {_first(quantised)}",
            "a quantised module has no gradients; explain the float model, before quantize_dynamic or convert",
        )


def _moved(t: torch.Tensor, dev: torch.device) -> bool:
    """Whether ``on_device`` replaces ``t``: it lies elsewhere, or is floating but not float32."""
    return t.device != dev or (t.is_floating_point() and t.dtype != torch.float32)


class on_device:
    """Within the block the model's parameters and buffers are on ``device``, the floating ones in
    float32 (every command computes in float32: a float16 or bfloat16 model is upcast exactly, a
    float64 one rounded, with one info line; integrated gradients in float16 are inaccurate and
    float16 arithmetic is missing or slow on CPUs); afterwards every module holds its own tensor
    objects again, where they were, in their dtype: parameters (the same ``Parameter`` objects,
    with their data and grads) and buffers, put back by name (``Module._apply`` may replace both).
    A device the machine lacks is refused (``check_device``), and so is a model on the meta device."""

    def __init__(self, model: nn.Module, device):
        self.model, self.device = model, check_device(device)

    def __enter__(self) -> nn.Module:
        dev = self.device
        check_values(self.model)
        self.params = [
            (mod, name, p, p.data, p.grad, None if p.grad is None else p.grad.data)
            for mod in self.model.modules()
            for name, p in mod._parameters.items()
            if p is not None and _moved(p, dev)
        ]
        self.buffers = [
            (mod, name, b)
            for mod in self.model.modules()
            for name, b in mod._buffers.items()
            if b is not None and _moved(b, dev)
        ]
        tensors = [entry[2] for entry in self.params] + [b for _, _, b in self.buffers]
        cast = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"})
        if cast:
            log.info("model: %s parameters computed in float32 (the model keeps its own dtype)", " and ".join(cast))
        if self.params or self.buffers:
            self.model.to(dev)
            if cast:
                self.model.float()
        return self.model

    def __exit__(self, *exc) -> None:
        for mod, name, p, data, grad, grad_data in self.params:
            mod._parameters[name] = p
            p.data = data
            if grad is not None and grad_data is not None:  # ``_apply`` converts a grad in place too
                grad.data = grad_data
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
    """The model as a run uses it (with gradients: a quantised one is refused, ``check_gradients``):
    in eval mode with its parameters frozen (``preserved``), on ``device`` in float32, torch's
    threads set, the seed drawn without touching the caller's global generator; all of it restored
    afterwards."""
    check_gradients(model)
    with (
        torch.random.fork_rng(devices=[]),
        preserved(model, freeze=True),
        on_device(model, device),
        threads(n_threads),
    ):
        torch.manual_seed(seed)
        yield model
