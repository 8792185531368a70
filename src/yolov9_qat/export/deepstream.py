"""DeepStream-Yolo's output layout: one tensor ``output`` (B, anchors, 6) holding, per anchor,
``x1, y1, x2, y2`` (input pixels), the best class score and that class's index (as a float).

This is the layout DeepStream-Yolo's ``NvDsInferParseYolo`` bounding-box parser reads (its
``export_yoloV9.py`` appends the same transform to the model); nvinfer then clusters the candidates
itself (``cluster-mode=2``, NMS). The input is named ``input``. One class per anchor (the best), so the
graph's detections equal the plain graph's under single-label NMS; see :func:`to_plain`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from yolov9_qat.utils.boxes import xywh2xyxy, xyxy2xywh


class DeepStreamOutput(nn.Module):
    """``model`` (eval output (B, 4 + nc, A)) -> (B, A, 6) ``x1 y1 x2 y2 score class``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x).transpose(1, 2)  # (B, A, 4 + nc)
        boxes = xywh2xyxy(y[..., :4])
        score, cls = y[..., 4:].max(-1, keepdim=True)
        return torch.cat((boxes, score, cls.to(boxes.dtype)), -1)


def to_plain(output: Any, nc: int) -> torch.Tensor:
    """The (B, A, 6) candidates as the plain head output (B, 4 + nc, A): boxes back to ``cx cy w h``,
    each anchor's score on its class and zero elsewhere, so the evaluator's NMS runs unchanged (its
    multi-label candidates are then exactly each anchor's best class)."""
    out = torch.as_tensor(output).float()
    b, a, _ = out.shape
    xywh = xyxy2xywh(out[..., :4])
    scores = torch.zeros(b, a, nc, dtype=out.dtype)
    scores.scatter_(-1, out[..., 5:6].long().clamp_(0, nc - 1), out[..., 4:5])
    return torch.cat((xywh, scores), -1).transpose(1, 2).contiguous()
