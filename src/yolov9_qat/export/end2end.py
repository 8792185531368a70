"""End-to-end graphs: the detector plus NMS, with the outputs ``num_dets`` (B, 1), ``det_boxes``
(B, K, 4; x1 y1 x2 y2 in input pixels), ``det_scores`` (B, K) and ``det_classes`` (B, K).

Two flavours of the NMS node, one semantics (per-class NMS over every (anchor, class) pair whose score
is above the threshold, then the ``K`` best per image):

* ``trt``: one ``EfficientNMS_TRT`` plugin node (domain ``TRT``), for TensorRT, DeepStream and Triton.
* ``onnx``: the standard ``NonMaxSuppression`` operator followed by a dense top-K, runnable in ONNX
  Runtime (and in TensorRT, which implements ``NonMaxSuppression`` too).

In PyTorch both flavours run :func:`reference_nms` (torchvision), so the traced module is a real
model whose outputs the exported graph must reproduce. Rows past ``num_dets`` are zero padding.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from yolov9_qat.export.layouts import END2END_OUTPUTS
from yolov9_qat.utils.boxes import xywh2xyxy

OUTPUT_NAMES = END2END_OUTPUTS
FLAVOURS = ("trt", "onnx")


def reference_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, conf_thres: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``boxes`` (B, A, 4) x1y1x2y2, ``scores`` (B, A, C) -> the four end-to-end outputs."""
    b = boxes.shape[0]
    num = torch.zeros(b, 1, dtype=torch.int32)
    out_boxes = torch.zeros(b, max_det, 4, dtype=boxes.dtype)
    out_scores = torch.zeros(b, max_det, dtype=scores.dtype)
    out_classes = torch.zeros(b, max_det, dtype=torch.int32)
    for i in range(b):
        anchor, cls = (scores[i] > conf_thres).nonzero(as_tuple=True)
        conf = scores[i][anchor, cls]
        keep = torchvision.ops.batched_nms(boxes[i][anchor].float(), conf.float(), cls, iou_thres)[:max_det]
        n = keep.numel()
        num[i, 0] = n
        out_boxes[i, :n] = boxes[i][anchor[keep]]
        out_scores[i, :n] = conf[keep]
        out_classes[i, :n] = cls[keep].to(torch.int32)
    return num, out_boxes, out_scores, out_classes


class _EfficientNMS(torch.autograd.Function):
    """Exports as TensorRT's ``EfficientNMS_TRT`` plugin; runs :func:`reference_nms` in PyTorch."""

    @staticmethod
    def forward(ctx: Any, boxes, scores, iou_thres: float, conf_thres: float, max_det: int):
        return reference_nms(boxes, scores, iou_thres, conf_thres, max_det)

    @staticmethod
    def symbolic(g: Any, boxes, scores, iou_thres: float, conf_thres: float, max_det: int):
        outs = g.op(
            "TRT::EfficientNMS_TRT",
            boxes,
            scores,
            background_class_i=-1,
            box_coding_i=0,  # corners: x1 y1 x2 y2 (the outputs keep this coding)
            iou_threshold_f=float(iou_thres),
            max_output_boxes_i=int(max_det),
            plugin_version_s="1",
            score_activation_i=0,  # scores are already sigmoid outputs
            score_threshold_f=float(conf_thres),
            outputs=4,
        )
        batch = boxes.type().sizes()[0] if boxes.type().sizes() else None
        shapes = ([batch, 1], [batch, max_det, 4], [batch, max_det], [batch, max_det])
        for out, shape, dtype in zip(
            outs, shapes, (torch.int32, torch.float32, torch.float32, torch.int32), strict=True
        ):
            out.setType(boxes.type().with_dtype(dtype).with_sizes(shape))
        return outs


class _OnnxNMS(torch.autograd.Function):
    """Exports as ONNX ``NonMaxSuppression`` (selected indices ``(K, 3)``: batch, class, anchor)."""

    @staticmethod
    def forward(ctx: Any, boxes, scores_bca, iou_thres: float, conf_thres: float, max_det: int):
        rows = []
        for i in range(boxes.shape[0]):
            for c in range(scores_bca.shape[1]):
                s = scores_bca[i, c]
                idx = (s > conf_thres).nonzero(as_tuple=True)[0]
                keep = idx[torchvision.ops.nms(boxes[i][idx].float(), s[idx].float(), iou_thres)][:max_det]
                rows.append(torch.stack((torch.full_like(keep, i), torch.full_like(keep, c), keep), 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes, scores_bca, iou_thres: float, conf_thres: float, max_det: int):
        def const(value: Any, dtype: torch.dtype) -> Any:
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression",
            boxes,
            scores_bca,
            const(int(max_det), torch.int64),
            const(float(iou_thres), torch.float32),
            const(float(conf_thres), torch.float32),
            center_point_box_i=0,
        )


class End2End(nn.Module):
    """``model`` (eval output (B, 4 + nc, A)) followed by NMS; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        nms: str = "trt",
        iou_thres: float = 0.45,
        conf_thres: float = 0.25,
        max_det: int = 100,
    ) -> None:
        super().__init__()
        if nms not in FLAVOURS:
            raise ValueError(f"nms must be one of {FLAVOURS}, got {nms!r}")
        self.model, self.nms = model, nms
        self.iou_thres, self.conf_thres, self.max_det = float(iou_thres), float(conf_thres), int(max_det)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.model(x)
        boxes = xywh2xyxy(y[:, :4].transpose(1, 2))  # (B, A, 4)
        scores = y[:, 4:]  # (B, C, A)
        args = (self.iou_thres, self.conf_thres, self.max_det)
        if self.nms == "trt":
            return _EfficientNMS.apply(boxes, scores.transpose(1, 2).contiguous(), *args)
        if not torch.onnx.is_in_onnx_export():
            return reference_nms(boxes, scores.transpose(1, 2), *args)
        return self._dense_topk(boxes, scores, _OnnxNMS.apply(boxes, scores, *args))

    def _dense_topk(
        self, boxes: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """NMS survivors -> the ``max_det`` best per image, as fixed-shape outputs (ONNX flavour).

        The survivors are marked in a dense (B, C * A) copy of the scores (everything else -1), then
        one ``TopK`` per image picks the best; no per-image loops, so the batch axis stays dynamic.
        """
        _b, c, a = scores.shape
        flat = selected[:, 0] * (c * a) + selected[:, 1] * a + selected[:, 2]
        mask = torch.zeros_like(scores).flatten().scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
        marked = torch.where(mask.view_as(scores) > 0, scores, torch.full_like(scores, -1.0)).flatten(1)
        k = min(self.max_det, c * a)
        top, idx = marked.topk(k, dim=1)
        valid = top >= 0
        anchor = idx % a
        det_boxes = torch.gather(boxes, 1, anchor.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        det_scores = top * valid
        det_classes = (idx // a).to(torch.int32) * valid.to(torch.int32)
        if k < self.max_det:  # fewer candidates than slots: pad to the declared width
            pad = self.max_det - k
            det_boxes = torch.cat((det_boxes, det_boxes[:, :1].mul(0).expand(-1, pad, -1)), 1)
            det_scores = torch.cat((det_scores, det_scores[:, :1].mul(0).expand(-1, pad)), 1)
            det_classes = torch.cat((det_classes, det_classes[:, :1].mul(0).expand(-1, pad)), 1)
        num = valid.sum(1, keepdim=True).to(torch.int32)
        return num, det_boxes, det_scores, det_classes


def detections_from_outputs(num: Any, boxes: Any, scores: Any, classes: Any) -> list[torch.Tensor]:
    """The four end-to-end outputs -> per-image ``(n, 6)`` tensors ``x1, y1, x2, y2, conf, cls``
    (the evaluator's post-NMS form)."""
    num, boxes, scores, classes = (torch.as_tensor(v) for v in (num, boxes, scores, classes))
    out = []
    for i in range(boxes.shape[0]):
        n = int(num[i].reshape(-1)[0])
        out.append(
            torch.cat((boxes[i, :n].float(), scores[i, :n, None].float(), classes[i, :n, None].float()), 1)
        )
    return out
