"""Anchor-free detection heads: DDetect (GELAN) and DualDDetect (YOLOv9, main + auxiliary branch).

Training mode returns the raw per-level maps (``nc + 4 * reg_max`` channels) for the loss. Eval mode
returns decoded predictions ``(B, 4 + nc, A)``: box centre x, y, width, height in input pixels, then
class scores after sigmoid. DualDDetect's eval output is the main branch (the one reparameterization
keeps); set ``return_aux = True`` to get ``(main, aux)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yolov9_qat.models.blocks import Conv, make_divisible
from yolov9_qat.utils.boxes import dist2bbox, make_anchors


class DFL(nn.Module):
    """Distribution focal loss integral: expected value of a softmax over ``c1`` bins, per box side."""

    def __init__(self, c1: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def _branch(ch: tuple[int, ...], nc: int, reg_max: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The box (grouped convs) and class towers of one DDetect branch over input channels ``ch``."""
    c2 = make_divisible(max(ch[0] // 4, reg_max * 4, 16), 4)
    c3 = max(ch[0], min(nc * 2, 128))
    box = nn.ModuleList(
        nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3, g=4), nn.Conv2d(c2, 4 * reg_max, 1, groups=4))
        for x in ch
    )
    cls = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
    return box, cls


def _init_bias(box: nn.ModuleList, cls: nn.ModuleList, stride: torch.Tensor, nc: int) -> None:
    """Upstream's prior: box logits 1.0; class logits for ~5 objects per 640x640 image."""
    for a, b, s in zip(box, cls, stride, strict=True):
        a[-1].bias.data[:] = 1.0
        b[-1].bias.data[:nc] = math.log(5 / nc / (640 / float(s)) ** 2)


class DDetect(nn.Module):
    """GELAN head over ``nl`` levels."""

    dual = False

    def __init__(self, nc: int = 80, ch: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.cv2, self.cv3 = _branch(tuple(ch), nc, self.reg_max)
        self.dfl = DFL(self.reg_max)

    def _level_outputs(self, x: list[torch.Tensor], box, cls) -> list[torch.Tensor]:
        return [torch.cat((box[i](x[i]), cls[i](x[i])), 1) for i in range(self.nl)]

    def decode(self, feats: list[torch.Tensor], dfl: DFL) -> torch.Tensor:
        """Raw level maps -> (B, 4 + nc, A) with xywh boxes in pixels and sigmoid class scores."""
        b = feats[0].shape[0]
        anchors, strides = (t.transpose(0, 1) for t in make_anchors(feats, self.stride, 0.5))
        box, cls = torch.cat([f.view(b, self.no, -1) for f in feats], 2).split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(dfl(box), anchors.unsqueeze(0), xywh=True, dim=1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def forward(self, x: list[torch.Tensor]):
        feats = self._level_outputs(x, self.cv2, self.cv3)
        if self.training:
            return feats
        return self.decode(feats, self.dfl)

    def bias_init(self) -> None:
        _init_bias(self.cv2, self.cv3, self.stride, self.nc)


class DualDDetect(DDetect):
    """YOLOv9 head: auxiliary branch (``cv2``/``cv3``/``dfl`` over the first ``nl`` inputs) and main
    branch (``cv4``/``cv5``/``dfl2`` over the last ``nl``)."""

    dual = True

    def __init__(self, nc: int = 80, ch: tuple[int, ...] = ()) -> None:
        nn.Module.__init__(self)
        self.nc = nc
        self.nl = len(ch) // 2
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.return_aux = False
        self.cv2, self.cv3 = _branch(tuple(ch[: self.nl]), nc, self.reg_max)
        self.cv4, self.cv5 = _branch(tuple(ch[self.nl :]), nc, self.reg_max)
        self.dfl = DFL(self.reg_max)
        self.dfl2 = DFL(self.reg_max)

    def forward(self, x: list[torch.Tensor]):
        aux = self._level_outputs(x[: self.nl], self.cv2, self.cv3)
        main = self._level_outputs(x[self.nl :], self.cv4, self.cv5)
        if self.training:
            return [aux, main]
        y_main = self.decode(main, self.dfl2)
        if self.return_aux:
            return y_main, self.decode(aux, self.dfl)
        return y_main

    def bias_init(self) -> None:
        _init_bias(self.cv2, self.cv3, self.stride, self.nc)
        _init_bias(self.cv4, self.cv5, self.stride, self.nc)
