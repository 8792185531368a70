"""Non-maximum suppression for the anchor-free YOLOv9 head, and undoing the letterbox on its boxes.

The head's eval output is ``(B, 4 + nc, A)``: rows 0-3 are box centre x, centre y, width and height
in input-image pixels, rows ``4:`` are per-class scores after the sigmoid. There is no objectness
row. :func:`non_max_suppression` follows upstream YOLOv9's semantics for this head: candidates by
class score, multi-label (one candidate per (anchor, class) pair above the threshold), a cap of
``max_nms`` candidates by score, per-class NMS by offsetting each class's boxes by ``cls * max_wh``
(run class by class: the same kept boxes, far less work) and a cap of ``max_det`` detections per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
import torchvision

from yolov9_qat.utils.boxes import xywh2xyxy

BoxArray = TypeVar("BoxArray", torch.Tensor, np.ndarray)
#: from this many candidates on, NMS runs class by class (below, one call is faster: fewer Python steps)
PER_CLASS_FROM = 1000


def non_max_suppression(
    pred: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.7,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = True,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """Per-image detections ``(n, 6)`` as ``x1, y1, x2, y2, conf, cls``, sorted by ``conf`` descending.

    Args:
        pred: the head's eval output, ``(B, 4 + nc, A)`` (boxes xywh in pixels, sigmoid scores).
        conf_thres: a candidate's class score must be strictly greater than this.
        iou_thres: boxes of the same class (or of any class when ``agnostic``) overlapping a
            higher-scored kept box by an IoU strictly greater than this are suppressed.
        max_det: at most this many detections per image.
        classes: keep only these class indices (``None``: all).
        agnostic: suppress across classes instead of within each class.
        multi_label: one candidate per (anchor, class) pair with a score above ``conf_thres``
            (upstream validation's setting); otherwise only each anchor's best class. Ignored
            (treated as ``False``) when there is a single class, as upstream does.
        max_nms: at most this many candidates, the highest-scored, go into NMS.
        max_wh: the class offset of the batched-NMS trick; must exceed every box coordinate.

    Returns:
        A list of ``B`` float32 tensors on ``pred``'s device; ``(0, 6)`` where nothing survives.
    """
    if not isinstance(pred, torch.Tensor) or pred.dim() != 3 or pred.shape[1] < 5:
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"expected predictions shaped (batch, 4 + classes, anchors), got {shape}")
    nc = pred.shape[1] - 4
    multi_label = multi_label and nc > 1
    device = pred.device
    candidates = pred[:, 4:].amax(1) > conf_thres  # (B, A)
    class_filter = (
        torch.as_tensor(list(classes), device=device, dtype=torch.float32) if classes is not None else None
    )

    output: list[torch.Tensor] = []
    for xi in range(pred.shape[0]):
        x = pred[xi].T[candidates[xi]].float()  # (n, 4 + nc)
        if not x.shape[0]:
            output.append(torch.zeros((0, 6), device=device))
            continue
        box = xywh2xyxy(x[:, :4])
        scores = x[:, 4:]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if class_filter is not None:
            x = x[(x[:, 5:6] == class_filter).any(1)]
        if not x.shape[0]:
            output.append(torch.zeros((0, 6), device=device))
            continue
        order = torch.sort(x[:, 4], descending=True, stable=True).indices[:max_nms]
        x = x[order]
        offsets = x[:, 5:6] * (0.0 if agnostic else float(max_wh))
        keep = _nms_by_class(x[:, :4] + offsets, x[:, 4], iou_thres, None if agnostic else x[:, 5])[:max_det]
        output.append(x[keep])
    return output


def _nms_by_class(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, cls: torch.Tensor | None
) -> torch.Tensor:
    """``torchvision.ops.nms`` of class-offset boxes sorted by score, run one class at a time: offset
    boxes of two classes never overlap, so the kept set is the one call's (IoUs computed on the same
    offset coordinates) while the quadratic work drops by about the number of classes. Returns the
    kept indices in input order (score descending, input order among equal scores)."""
    if cls is None or boxes.shape[0] <= PER_CLASS_FROM:
        return torchvision.ops.nms(boxes, scores, iou_thres)
    keep = [
        idx[torchvision.ops.nms(boxes[idx], scores[idx], iou_thres)]
        for idx in (torch.nonzero(cls == c).view(-1) for c in torch.unique(cls))
    ]
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def _float_copy(boxes: BoxArray) -> BoxArray:
    """A floating-point copy of a tensor or array (integer input becomes float32 / float64)."""
    if isinstance(boxes, torch.Tensor):
        return boxes.clone() if boxes.is_floating_point() else boxes.float()
    arr = np.asarray(boxes)
    return arr.astype(np.result_type(arr.dtype, np.float32), copy=True)


def clip_boxes(boxes: BoxArray, shape: Sequence[int]) -> BoxArray:
    """Clip xyxy boxes (columns 0-3; other columns untouched) to an image of ``shape = (h, w)``.

    Returns a new floating-point tensor or array of the same kind; the input is not modified.
    """
    h, w = float(shape[0]), float(shape[1])
    out = _float_copy(boxes)
    if isinstance(out, torch.Tensor):
        out[..., [0, 2]] = out[..., [0, 2]].clamp(0, w)
        out[..., [1, 3]] = out[..., [1, 3]].clamp(0, h)
        return out
    out[..., [0, 2]] = out[..., [0, 2]].clip(0, w)
    out[..., [1, 3]] = out[..., [1, 3]].clip(0, h)
    return out


def scale_boxes(
    img1_shape: Sequence[int],
    boxes: BoxArray,
    img0_shape: Sequence[int],
    ratio_pad: tuple[Sequence[float], Sequence[float]] | None = None,
) -> BoxArray:
    """Map xyxy boxes from the letterboxed image back to the original one, and clip them to it.

    Args:
        img1_shape: ``(h, w)`` of the letterboxed network input the boxes are in.
        boxes: ``(n, >=4)`` xyxy boxes in columns 0-3; other columns pass through.
        img0_shape: ``(h, w)`` of the original image.
        ratio_pad: ``((gain, gain), (pad_w, pad_h))`` as recorded by the letterbox; ``None``
            recomputes them assuming a centred letterbox with one gain for both axes.

    Returns:
        A new tensor or array of the same kind (the input is not modified).
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad_w = (img1_shape[1] - img0_shape[1] * gain) / 2
        pad_h = (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad_w, pad_h = ratio_pad[1][0], ratio_pad[1][1]
    out = _float_copy(boxes)
    out[..., [0, 2]] -= pad_w
    out[..., [1, 3]] -= pad_h
    out[..., :4] /= gain
    return clip_boxes(out, img0_shape)
