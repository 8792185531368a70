"""YOLOv9 detection loss: task-aligned assignment, CIoU + DFL box loss, BCE class loss.

Follows upstream YOLOv9's ``utils/loss_tal.py`` (single head) and ``utils/loss_tal_dual.py`` (dual head):

* the head's training output per stride is ``(B, 4 * reg_max + nc, H, W)``: side-major box-distribution logits
  (4 groups of ``reg_max`` bins: left, top, right, bottom), then class logits;
* box loss ``1 - CIoU`` and DFL, both weighted by each positive anchor's target score and divided by the sum
  of target scores; the DFL uses bins ``0 .. reg_max - 1``, targets clamped to ``reg_max - 1.01``;
* class loss: BCE-with-logits summed over anchors and classes, divided by the same sum;
* gains ``box 7.5``, ``cls 0.5``, ``dfl 1.5`` (hyp.scratch-high.yaml), overridable by ``hyp``;
* the dual loss assigns each branch separately with its own predictions and weights the auxiliary branch
  0.25 and the main branch 1.0 (box, cls and dfl alike) before the gains;
* ``__call__`` returns ``(sum of the gained losses * batch_size, tensor([box, cls, dfl]).detach())``.

The loss is always computed in float32, with autocast disabled, whatever the dtype of the head's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov9_qat.train.assigner import TaskAlignedAssigner
from yolov9_qat.utils.boxes import bbox2dist, bbox_ciou, dist2bbox, make_anchors, xywh2xyxy

__all__ = [
    "DEFAULT_HYP",
    "DUAL_WEIGHTS",
    "DetectionLoss",
    "DualDetectionLoss",
    "bbox_loss",
    "build_loss",
    "build_targets",
    "decode_bboxes",
    "distribution_focal_loss",
    "is_dual_output",
]

#: Loss gains of upstream hyp.scratch-high.yaml (``cls_pw`` is the BCE positive weight).
DEFAULT_HYP: dict[str, float] = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "cls_pw": 1.0}

#: (auxiliary, main) branch weights of upstream ``loss_tal_dual.py``.
DUAL_WEIGHTS: tuple[float, float] = (0.25, 1.0)

#: Upstream TAL settings (``YOLOM``, ``YOLOA``, ``YOLOB`` in loss_tal.py).
TAL_TOPK, TAL_ALPHA, TAL_BETA = 10, 0.5, 6.0


# --------------------------------------------------------------------------------------------- pieces


def decode_bboxes(pred_dist: Tensor, anchor_points: Tensor) -> Tensor:
    """Box-distribution logits (B, A, 4 * reg_max) -> xyxy boxes (B, A, 4) in the anchors' grid units.

    Each side's distance is the expectation of its softmax over bins ``0 .. reg_max - 1``.
    """
    b, a, c = pred_dist.shape
    reg_max = c // 4
    proj = torch.arange(reg_max, device=pred_dist.device, dtype=pred_dist.dtype)
    dist = pred_dist.view(b, a, 4, reg_max).softmax(-1).matmul(proj)
    return dist2bbox(dist, anchor_points, xywh=False)


def distribution_focal_loss(pred_dist: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss (Li et al., 2020), averaged over the 4 sides.

    Cross-entropy of each side's distribution to the two integer bins around its target distance, weighted
    linearly by proximity: ``(r - t) * CE(left) + (t - l) * CE(right)`` with ``l = floor(t)``, ``r = l + 1``.

    Args:
        pred_dist: (..., 4, n_bins) logits.
        target: (..., 4) distances in bin units, in ``[0, n_bins - 1]``.

    Returns:
        (..., 1) loss per box.
    """
    n_bins = pred_dist.shape[-1]
    target = target.clamp(0, n_bins - 1)
    left = target.long().clamp(max=n_bins - 1)
    w_left = (left + 1).to(target.dtype) - target
    w_right = 1.0 - w_left
    right = (left + 1).clamp(max=n_bins - 1)  # only reached with w_right == 0
    logp = pred_dist.log_softmax(-1)
    ce_left = -logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    ce_right = -logp.gather(-1, right.unsqueeze(-1)).squeeze(-1)
    return (ce_left * w_left + ce_right * w_right).mean(-1, keepdim=True)


def bbox_loss(
    pred_dist: Tensor,
    pred_bboxes: Tensor,
    anchor_points: Tensor,
    target_bboxes: Tensor,
    target_scores: Tensor,
    target_scores_sum: Tensor | float,
    fg_mask: Tensor,
) -> tuple[Tensor, Tensor]:
    """CIoU loss and DFL over the positive anchors, each weighted by the anchor's target score.

    Args:
        pred_dist: (B, A, 4 * reg_max) box-distribution logits.
        pred_bboxes: (B, A, 4) decoded predicted boxes, xyxy, in grid units.
        anchor_points: (A, 2) anchor centres in grid units.
        target_bboxes: (B, A, 4) assigned gt boxes, xyxy, in grid units.
        target_scores: (B, A, nc) soft class targets from the assigner.
        target_scores_sum: normaliser (sum of all target scores, at least 1).
        fg_mask: (B, A) bool, positive anchors.

    Returns:
        ``(loss_iou, loss_dfl)`` scalars (not yet multiplied by the gains).
    """
    reg_max = pred_dist.shape[-1] // 4
    weight = target_scores.sum(-1)[fg_mask].unsqueeze(-1)  # (N, 1)
    iou = bbox_ciou(pred_bboxes[fg_mask], target_bboxes[fg_mask])  # (N,)
    loss_iou = ((1.0 - iou).unsqueeze(-1) * weight).sum() / target_scores_sum
    target_ltrb = bbox2dist(anchor_points, target_bboxes, reg_max - 1)[fg_mask]  # (N, 4)
    dfl = distribution_focal_loss(pred_dist[fg_mask].view(-1, 4, reg_max), target_ltrb)
    loss_dfl = (dfl * weight).sum() / target_scores_sum
    return loss_iou, loss_dfl


def build_targets(
    targets: Tensor, batch_size: int, img_h: float, img_w: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image padded targets from a ``(n, 6)`` ``[image, cls, cx, cy, w, h]`` (normalised) tensor.

    Returns ``(gt_labels (B, M, 1), gt_bboxes (B, M, 4) xyxy in pixels, mask_gt (B, M, 1) bool)`` with ``M``
    the largest number of boxes in one image (0 when there are none).
    """
    device = targets.device
    targets = targets.float()
    n = targets.shape[0]
    if n == 0:
        return (
            torch.zeros(batch_size, 0, 1, device=device),
            torch.zeros(batch_size, 0, 4, device=device),
            torch.zeros(batch_size, 0, 1, dtype=torch.bool, device=device),
        )
    img = targets[:, 0].long()
    counts = torch.bincount(img.clamp(min=0), minlength=batch_size)
    if counts.numel() > batch_size or bool((img < 0).any()):
        raise ValueError(f"target image indices must lie in [0, {batch_size - 1}]")
    m = int(counts.max())
    order = torch.argsort(img, stable=True)
    img_sorted = img[order]
    starts = counts.cumsum(0) - counts
    slot = torch.arange(n, device=device) - starts[img_sorted]
    rows = torch.zeros(batch_size, m, 5, device=device)
    rows[img_sorted, slot] = targets[order, 1:6]
    mask_gt = torch.zeros(batch_size, m, 1, dtype=torch.bool, device=device)
    mask_gt[img_sorted, slot] = True
    scale = torch.tensor([img_w, img_h, img_w, img_h], device=device)
    gt_bboxes = xywh2xyxy(rows[..., 1:5] * scale) * mask_gt
    return rows[..., :1], gt_bboxes, mask_gt


# ------------------------------------------------------------------------------------ output shapes


def _is_feats(x: Any) -> bool:
    return (
        isinstance(x, list | tuple) and len(x) > 0 and all(isinstance(t, Tensor) and t.dim() == 4 for t in x)
    )


def _is_dual(x: Any) -> bool:
    return isinstance(x, list | tuple) and len(x) == 2 and all(_is_feats(b) for b in x)


def _training_output(preds: Any) -> Any:
    """The head's training output, unwrapping an eval-mode ``(inference, training_output)`` tuple."""
    if _is_feats(preds) or _is_dual(preds):
        return preds
    if isinstance(preds, tuple) and len(preds) == 2 and (_is_feats(preds[1]) or _is_dual(preds[1])):
        return preds[1]
    raise ValueError(
        "expected the detection head's training output: a list of (B, no, H, W) tensors, one per stride, "
        "or for a dual head a list of two such lists"
    )


def is_dual_output(preds: Any) -> bool:
    """True when ``preds`` is a dual head's training output ``[d_aux, d_main]`` (each a list of maps)."""
    try:
        return _is_dual(_training_output(preds))
    except ValueError:
        return False


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------- the losses


class DetectionLoss:
    """Loss of a single YOLOv9 ``DDetect`` head.

    Args:
        nc: number of classes.
        stride: the head's strides, e.g. ``[8, 16, 32]``, one per feature map.
        reg_max: bins per box side in the head's distribution output.
        hyp: hyper-parameters; reads the ``box``, ``cls``, ``dfl`` gains and ``cls_pw``
            (defaults: ``DEFAULT_HYP``); other keys are ignored.
        device: where to keep the strides (they follow the predictions' device anyway).
    """

    def __init__(
        self,
        nc: int,
        stride: Tensor | Sequence[float],
        reg_max: int = 16,
        hyp: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.nc = int(nc)
        self.reg_max = int(reg_max)
        self.no = self.nc + 4 * self.reg_max
        self.stride = torch.as_tensor(stride, dtype=torch.float32, device=device).flatten()
        merged = {**DEFAULT_HYP, **(dict(hyp) if hyp else {})}
        self.hyp = merged
        self.gains = (float(merged["box"]), float(merged["cls"]), float(merged["dfl"]))
        self.cls_pw = float(merged["cls_pw"])
        self.assigner = TaskAlignedAssigner(
            topk=TAL_TOPK, num_classes=self.nc, alpha=TAL_ALPHA, beta=TAL_BETA
        )

    @classmethod
    def from_model(cls, model: nn.Module, hyp: Mapping[str, Any] | None = None) -> DetectionLoss:
        """Build from a model exposing ``model.head.nc``, ``model.head.reg_max`` and ``model.stride``.

        ``hyp`` defaults to ``model.hyp`` when the model has one.
        """
        head = model.head
        if hyp is None:
            hyp = getattr(model, "hyp", None)
        param = next(model.parameters(), None)
        device = param.device if param is not None else None
        return cls(nc=head.nc, stride=model.stride, reg_max=head.reg_max, hyp=hyp, device=device)

    def __call__(self, preds: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Loss of the head's training output against ``(n, 6)`` targets ``[image, cls, cx, cy, w, h]``.

        Returns ``(total * batch_size, tensor([box, cls, dfl]).detach())``; backpropagate the first.
        """
        feats = _training_output(preds)
        if _is_dual(feats):
            raise ValueError("got a dual head's output [d_aux, d_main]; use DualDetectionLoss")
        return self._combine([feats], [1.0], targets)

    # -- shared machinery

    def _combine(
        self, branches: list[Sequence[Tensor]], weights: Sequence[float], targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        feats0 = branches[0]
        device = feats0[0].device
        with _no_autocast(device):
            batch_size = feats0[0].shape[0]
            stride = self.stride.to(device)
            if len(feats0) != stride.numel():
                raise ValueError(f"got {len(feats0)} feature maps for {stride.numel()} strides")
            img_h = float(feats0[0].shape[2] * stride[0])
            img_w = float(feats0[0].shape[3] * stride[0])
            targets = targets.to(device)
            if targets.numel() and bool(((targets[:, 1] < 0) | (targets[:, 1] >= self.nc)).any()):
                raise ValueError(f"target class indices must lie in [0, {self.nc - 1}]")
            gt = build_targets(targets, batch_size, img_h, img_w)
            # make_anchors reads only shape, dtype and device: float32 anchors even for half-precision feats
            shapes = [f.new_empty((0, 0, *f.shape[-2:]), dtype=torch.float32) for f in feats0]
            anchor_points, stride_tensor = make_anchors(shapes, stride, offset=0.5)
            total = torch.zeros(3, device=device)
            for feats, w in zip(branches, weights, strict=True):
                total = total + w * self._branch(feats, gt, anchor_points, stride_tensor)
            loss = total * torch.tensor(self.gains, device=device)
        return loss.sum() * batch_size, loss.detach()

    def _branch(
        self,
        feats: Sequence[Tensor],
        gt: tuple[Tensor, Tensor, Tensor],
        anchor_points: Tensor,
        stride_tensor: Tensor,
    ) -> Tensor:
        """Un-gained ``[box, cls, dfl]`` of one branch, with its own assignment."""
        gt_labels, gt_bboxes, mask_gt = gt
        b = feats[0].shape[0]
        for f in feats:
            if f.shape[1] != self.no:
                raise ValueError(
                    f"feature map has {f.shape[1]} channels, expected 4*{self.reg_max}+{self.nc}"
                )
        x = torch.cat([f.float().reshape(b, self.no, -1) for f in feats], 2)
        pred_dist, pred_scores = x.split((4 * self.reg_max, self.nc), 1)
        pred_dist = pred_dist.permute(0, 2, 1).contiguous()  # (B, A, 4 * reg_max)
        pred_scores = pred_scores.permute(0, 2, 1).contiguous()  # (B, A, nc)
        pred_bboxes = decode_bboxes(pred_dist, anchor_points)  # grid units

        _, target_bboxes, target_scores, fg_mask = self.assigner(
            pred_scores.detach().sigmoid(),
            pred_bboxes.detach() * stride_tensor,
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        target_bboxes = target_bboxes / stride_tensor
        target_scores_sum = target_scores.sum().clamp(min=1.0)

        pos_weight = torch.tensor([self.cls_pw], device=pred_scores.device)
        loss_cls = (
            F.binary_cross_entropy_with_logits(
                pred_scores, target_scores, pos_weight=pos_weight, reduction="none"
            )
            .sum()
            .div(target_scores_sum)
        )
        if bool(fg_mask.any()):
            loss_box, loss_dfl = bbox_loss(
                pred_dist,
                pred_bboxes,
                anchor_points,
                target_bboxes,
                target_scores,
                target_scores_sum,
                fg_mask,
            )
        else:  # exact zeros that still touch the box branch (keeps every parameter in the graph, e.g. DDP)
            loss_box = loss_dfl = pred_dist.sum() * 0.0
        return torch.stack((loss_box, loss_cls, loss_dfl))


class DualDetectionLoss(DetectionLoss):
    """Loss of a ``DualDDetect`` head: ``aux_weight * loss(d_aux) + main_weight * loss(d_main)``.

    Each branch is assigned separately with its own predictions (as upstream ``loss_tal_dual.py``); the
    weights (upstream: aux 0.25, main 1.0) apply to box, cls and dfl before the gains.
    """

    def __init__(
        self,
        nc: int,
        stride: Tensor | Sequence[float],
        reg_max: int = 16,
        hyp: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        aux_weight: float = DUAL_WEIGHTS[0],
        main_weight: float = DUAL_WEIGHTS[1],
    ) -> None:
        super().__init__(nc, stride, reg_max=reg_max, hyp=hyp, device=device)
        self.weights = (float(aux_weight), float(main_weight))

    def __call__(self, preds: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Loss of ``[d_aux, d_main]``; same return convention as :class:`DetectionLoss`."""
        out = _training_output(preds)
        if not _is_dual(out):
            raise ValueError("DualDetectionLoss expects a dual head's output [d_aux, d_main]")
        aux, main = out
        if [f.shape for f in aux] != [f.shape for f in main]:
            raise ValueError("the auxiliary and main branches must have the same feature-map shapes")
        return self._combine([aux, main], self.weights, targets)


def build_loss(model: nn.Module, hyp: Mapping[str, Any] | None = None, outputs: Any = None) -> DetectionLoss:
    """The loss for ``model``: :class:`DualDetectionLoss` when ``model.head.dual`` is true or when
    ``outputs`` (a sample training output, optional) is ``[d_aux, d_main]``, else :class:`DetectionLoss`."""
    dual = bool(getattr(getattr(model, "head", None), "dual", False))
    if outputs is not None:
        dual = dual or is_dual_output(outputs)
    cls = DualDetectionLoss if dual else DetectionLoss
    return cls.from_model(model, hyp)
