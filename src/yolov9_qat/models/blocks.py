"""The upstream YOLOv9 block set, with upstream's attribute names so that state dicts map one to one.

Every block here has the same sub-module names as ``models.common`` upstream (``conv``, ``bn``,
``cv1`` ...), which is what lets an official checkpoint's state dict load without renaming.
Inference-time folding (Conv+BN, RepConvN's two branches) lives in each block's ``fuse``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from yolov9_qat.models.activations import make_act


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """'Same' padding for kernel ``k`` and dilation ``d``."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= x (upstream's channel rounding)."""
    return int(math.ceil(x / divisor) * divisor)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias that computes ``bn(conv(x))`` (BN in inference mode)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    fused.weight.data.copy_(w)
    fused.bias.data.copy_(b)
    return fused.requires_grad_(conv.weight.requires_grad)


def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` for a conv with ``weight`` / ``bias``."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return (weight * scale.reshape(-1, 1, 1, 1)).detach(), (bn.bias + (b - bn.running_mean) * scale).detach()


class Conv(nn.Module):
    """Conv2d + BatchNorm2d + activation (``act=False``: none; ``True``: the model's activation)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        if act is True:
            self.act = make_act(c2)
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class RepConvN(nn.Module):
    """RepVGG-style 3x3 + 1x1 branches (no identity branch), folded into one 3x3 conv by ``fuse``."""

    def __init__(self, c1, c2, k=3, s=1, p=1, g=1, d=1, act=True, bn=False, deploy=False) -> None:
        super().__init__()
        assert k == 3 and p == 1, "RepConvN is a 3x3 block with padding 1"
        self.g, self.c1, self.c2 = g, c1, c2
        if act is True:
            self.act = make_act(c2)
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()
        self.bn = None
        self.conv1 = Conv(c1, c2, k, s, p=p, g=g, act=False)
        self.conv2 = Conv(c1, c2, 1, s, p=(p - k // 2), g=g, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def fuse(self) -> None:
        if hasattr(self, "conv"):
            return
        k3, b3 = fold_bn(self.conv1.conv.weight, None, self.conv1.bn)
        k1, b1 = fold_bn(self.conv2.conv.weight, None, self.conv2.bn)
        ref = self.conv1.conv
        conv = nn.Conv2d(
            ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation,
            ref.groups, bias=True,
        ).to(ref.weight.device)  # fmt: skip
        conv.weight.data.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        conv.bias.data.copy_(b3 + b1)
        self.conv = conv.requires_grad_(ref.weight.requires_grad)
        del self.conv1, self.conv2


class RepNBottleneck(nn.Module):
    """RepConvN 3x3 then Conv 3x3, with a residual add when shapes allow."""

    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = RepConvN(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class RepNCSP(nn.Module):
    """CSP block: two 1x1 branches, one through ``n`` RepNBottlenecks, concatenated and mixed."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(RepNBottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class _SplitChainConcat(nn.Module):
    """ELAN pattern: ``cv1`` then split in two; ``cv2``, ``cv3`` chained on the second half; all four
    concatenated and mixed by ``cv4``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class RepNCSPELAN4(_SplitChainConcat):
    """GELAN's main block: split, two chained RepNCSP+Conv stages, concatenate all four, mix."""

    def __init__(self, c1, c2, c3, c4, c5=1) -> None:
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = nn.Sequential(RepNCSP(c3 // 2, c4, c5), Conv(c4, c4, 3, 1))
        self.cv3 = nn.Sequential(RepNCSP(c4, c4, c5), Conv(c4, c4, 3, 1))
        self.cv4 = Conv(c3 + (2 * c4), c2, 1, 1)


class ELAN1(_SplitChainConcat):
    """The light ELAN block of the t/s models: like RepNCSPELAN4 with plain 3x3 convs."""

    def __init__(self, c1, c2, c3, c4) -> None:
        super().__init__()
        self.c = c3 // 2
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = Conv(c3 // 2, c4, 3, 1)
        self.cv3 = Conv(c4, c4, 3, 1)
        self.cv4 = Conv(c3 + (2 * c4), c2, 1, 1)


def _smooth_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pool with stride 1 (upstream's anti-aliasing before a strided conv)."""
    return F.avg_pool2d(x, 2, 1, 0, False, True)


class AConv(nn.Module):
    """Average-pool (2x2, stride 1) then a 3x3 stride-2 Conv."""

    def __init__(self, c1, c2) -> None:
        super().__init__()
        self.cv1 = Conv(c1, c2, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(_smooth_pool(x))


class ADown(nn.Module):
    """Down-sampling in two halves: 3x3 stride-2 Conv, and 3x3 max-pool + 1x1 Conv."""

    def __init__(self, c1, c2) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1 // 2, self.c, 3, 2, 1)
        self.cv2 = Conv(c1 // 2, self.c, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = _smooth_pool(x).chunk(2, 1)
        return torch.cat((self.cv1(x1), self.cv2(F.max_pool2d(x2, 3, 2, 1))), 1)


class SP(nn.Module):
    """Max-pool with 'same' padding and stride 1."""

    def __init__(self, k=3, s=1) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPELAN(nn.Module):
    """Spatial pyramid pooling in ELAN form: 1x1 Conv, three chained 5x5 max-pools, concat, 1x1 Conv."""

    def __init__(self, c1, c2, c3) -> None:
        super().__init__()
        self.c = c3
        self.cv1 = Conv(c1, c3, 1, 1)
        self.cv2 = SP(5)
        self.cv3 = SP(5)
        self.cv4 = SP(5)
        self.cv5 = Conv(4 * c3, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for m in (self.cv2, self.cv3, self.cv4):
            y.append(m(y[-1]))
        return self.cv5(torch.cat(y, 1))


class Concat(nn.Module):
    def __init__(self, dimension=1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Silence(nn.Module):
    """Identity: the input image as a layer, so the auxiliary branch can start from it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class CBLinear(nn.Module):
    """One conv whose output is split into several routing tensors (CBNet auxiliary branch)."""

    def __init__(self, c1, c2s, k=1, s=1, p=None, g=1) -> None:
        super().__init__()
        self.c2s = list(c2s)
        self.conv = nn.Conv2d(c1, sum(self.c2s), k, s, autopad(k, p), groups=g, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.conv(x).split(self.c2s, dim=1)


class CBFuse(nn.Module):
    """Sum the selected routing tensors, resized (nearest) to the last input's size, with the last input."""

    def __init__(self, idx) -> None:
        super().__init__()
        self.idx = list(idx)

    def forward(self, xs: list) -> torch.Tensor:
        size = xs[-1].shape[2:]
        out = xs[-1]
        for i, x in enumerate(xs[:-1]):
            out = out + F.interpolate(x[self.idx[i]], size=size, mode="nearest")
        return out
