"""The five activations of the record (SiLU, ReLU, FReLU, Mish, AconC) and how a model picks one.

Upstream YOLOv9 sets the activation of every ``Conv`` / ``RepConvN`` through a class attribute while a
model is built (YAML key ``activation: nn.ReLU()``). Here the same choice is scoped: blocks call
:func:`make_act` while :func:`use_activation` is active, so two models with different activations can
be built side by side. FReLU and AconC carry per-channel parameters, hence ``make_act(channels)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from yolov9_qat.errors import ConfigError


class _Maximum(torch.autograd.Function):
    """``torch.maximum(a, b)`` with a cheaper backward on the CPU, the same gradients bit for bit.

    PyTorch's own backward (``MaximumBackward0``: eq, div, where, lt, masked_fill over the whole
    tensor) took 39 % of a FReLU yolov9-n training step on one CPU thread (torch profiler, batch 16
    at 160 px). This one keeps the forward's comparison (one byte an element) and routes the gradient with
    it; at exact ties (rare) it splits the gradient evenly, as PyTorch does.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        tie = a == b
        ctx.save_for_backward(a > b, tie if bool(tie.any()) else None)
        return torch.maximum(a, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        greater, tie = ctx.saved_tensors
        ga = torch.where(greater, grad, 0.0)
        if tie is not None:
            ga = torch.where(tie, grad / 2, ga)
        return ga, grad - ga


def maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.max(a, b)``; while gradients are recorded (training, QAT) through :class:`_Maximum`.
    Exports and traces see the plain op (ONNX ``Max``)."""
    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad) and not tracing:
        return _Maximum.apply(a, b)
    return torch.max(a, b)


class FReLU(nn.Module):
    """Funnel activation (Ma et al., 2020): ``max(x, BN(depthwise_conv3x3(x)))``."""

    def __init__(self, c1: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c1, k, 1, k // 2, groups=c1, bias=False)
        self.bn = nn.BatchNorm2d(c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maximum(x, self.bn(self.conv(x)))


class AconC(nn.Module):
    """ACON-C (Ma et al., 2021): ``(p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x`` per channel."""

    def __init__(self, c1: int) -> None:
        super().__init__()
        self.p1 = nn.Parameter(torch.randn(1, c1, 1, 1))
        self.p2 = nn.Parameter(torch.randn(1, c1, 1, 1))
        self.beta = nn.Parameter(torch.ones(1, c1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dpx = (self.p1 - self.p2) * x
        return dpx * torch.sigmoid(self.beta * dpx) + self.p2 * x


#: canonical name -> factory taking the channel count
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "SiLU": nn.SiLU,
    "ReLU": nn.ReLU,
    "FReLU": FReLU,
    "Mish": nn.Mish,
    "AconC": AconC,
}
_PARAMETRIC = {"FReLU", "AconC"}
DEFAULT_ACTIVATION = "SiLU"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("activation", default=DEFAULT_ACTIVATION)


def canonical_activation(name: str | None) -> str:
    """Normalise ``silu``, ``nn.SiLU()``, ``SiLU`` ... to the canonical name; ``None`` -> default."""
    if name is None or name == "":
        return DEFAULT_ACTIVATION
    key = str(name).strip()
    key = key.removeprefix("nn.").removeprefix("torch.nn.")
    key = key.split("(")[0]
    for canonical in ACTIVATIONS:
        if canonical.lower() == key.lower():
            return canonical
    raise ConfigError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


@contextlib.contextmanager
def use_activation(name: str | None) -> Iterator[str]:
    """Blocks built inside this context use activation ``name``."""
    token = _current.set(canonical_activation(name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def current_activation() -> str:
    return _current.get()


def make_act(channels: int) -> nn.Module:
    """A fresh activation module of the current kind for a layer with ``channels`` outputs."""
    name = _current.get()
    cls = ACTIVATIONS[name]
    return cls(channels) if name in _PARAMETRIC else cls()


def activation_of(module: nn.Module) -> str | None:
    """The canonical activation name of an activation module instance, or ``None`` if it is not one."""
    name = type(module).__name__
    for canonical in ACTIVATIONS:
        if canonical.lower() == name.lower():
            return canonical
    return None
