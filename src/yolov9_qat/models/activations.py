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

import torch
from torch import nn

from yolov9_qat.errors import ConfigError


class FReLU(nn.Module):
    """Funnel activation (Ma et al., 2020): ``max(x, BN(depthwise_conv3x3(x)))``."""

    def __init__(self, c1: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c1, k, 1, k // 2, groups=c1, bias=False)
        self.bn = nn.BatchNorm2d(c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.max(x, self.bn(self.conv(x)))


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
