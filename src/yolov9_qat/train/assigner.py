"""Task-aligned label assignment (TOOD / YOLOv9's TAL), fully vectorised over batch, gts and anchors.

Each ground-truth box picks, among the anchors whose centre lies strictly inside it, the ``topk`` anchors with
the largest alignment metric ``t = s**alpha * u**beta`` (``s``: the predicted probability of the gt's class at
that anchor, ``u``: the CIoU of the anchor's predicted box with the gt, clamped at 0). An anchor picked by
several gts keeps the one its prediction overlaps most. The soft class target of a positive anchor is its
metric normalised per gt so that the gt's best anchor gets that gt's best overlap.

Defaults are upstream YOLOv9's: ``topk=10``, ``alpha=0.5``, ``beta=6.0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov9_qat.utils.boxes import bbox_ciou

__all__ = ["TaskAlignedAssigner"]


class TaskAlignedAssigner(nn.Module):
    """Assigns ground-truth boxes to anchors by the task-aligned metric.

    Args:
        topk: anchors each gt may take (fewer when it contains fewer anchors).
        num_classes: number of classes; also the label given to background anchors.
        alpha: exponent of the classification score in the metric.
        beta: exponent of the IoU in the metric.
        eps: numerical guard (also the margin by which an anchor centre must lie inside a gt).
    """

    def __init__(
        self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9
    ) -> None:
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.bg_idx = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    @torch.no_grad()
    def forward(
        self,
        pd_scores: Tensor,
        pd_bboxes: Tensor,
        anc_points: Tensor,
        gt_labels: Tensor,
        gt_bboxes: Tensor,
        mask_gt: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assign targets. All boxes are xyxy in the same (pixel) frame as ``anc_points``.

        Args:
            pd_scores: (B, A, nc) predicted class probabilities (after sigmoid).
            pd_bboxes: (B, A, 4) predicted boxes, xyxy.
            anc_points: (A, 2) anchor centres, x, y.
            gt_labels: (B, M, 1) class index of each (padded) gt.
            gt_bboxes: (B, M, 4) gt boxes, xyxy.
            mask_gt: (B, M, 1) 1 for a real gt, 0 for padding.

        Returns:
            ``(target_labels (B, A) long, target_bboxes (B, A, 4), target_scores (B, A, nc),
            fg_mask (B, A) bool)``.
            Background anchors get label ``num_classes``, a zero box and zero scores.
        """
        bs, n_anchors, nc = pd_scores.shape
        if nc != self.num_classes:
            raise ValueError(f"pd_scores has {nc} classes, the assigner was built for {self.num_classes}")
        n_max = gt_bboxes.shape[1]
        device = pd_scores.device
        if n_max == 0 or not bool(mask_gt.any()):
            return self._background(bs, n_anchors, nc, device)

        pd_scores = pd_scores.float()
        pd_bboxes = pd_bboxes.float()
        anc_points = anc_points.float()
        gt_bboxes = gt_bboxes.float()
        labels = gt_labels.long().view(bs, n_max).clamp(0, nc - 1)  # padding rows may hold anything
        valid = mask_gt.view(bs, n_max, 1).bool()

        # Anchors whose centre is strictly inside the gt: (B, M, A).
        lt, rb = gt_bboxes[:, :, None, :2], gt_bboxes[:, :, None, 2:]
        deltas = torch.cat((anc_points - lt, rb - anc_points), -1)
        candidates = (deltas.amin(-1) > self.eps) & valid

        # Alignment metric: score of the gt's class at each anchor times CIoU of the prediction with the gt.
        scores = pd_scores.gather(2, labels[:, None, :].expand(bs, n_anchors, n_max)).transpose(1, 2)
        overlaps = bbox_ciou(gt_bboxes[:, :, None, :], pd_bboxes[:, None, :, :]).clamp(min=0)
        align_metric = scores.pow(self.alpha) * overlaps.pow(self.beta)

        # Top-k per gt among its candidates (non-candidates ranked below every candidate, even a zero one).
        k = min(self.topk, n_anchors)
        ranked = torch.where(candidates, align_metric, torch.full_like(align_metric, -1.0))
        topk_idx = ranked.topk(k, dim=-1).indices
        in_topk = torch.zeros_like(candidates).scatter_(-1, topk_idx, True)
        mask_pos = in_topk & candidates  # (B, M, A)

        # An anchor taken by several gts keeps the one with the highest overlap among them.
        fg_mask = mask_pos.any(1)  # (B, A)
        target_gt_idx = torch.where(mask_pos, overlaps, torch.full_like(overlaps, -1.0)).argmax(1)  # (B, A)
        mask_pos &= F.one_hot(target_gt_idx, n_max).transpose(1, 2).bool()

        # Targets gathered from the chosen gt.
        target_labels = labels.gather(1, target_gt_idx)
        target_labels = torch.where(fg_mask, target_labels, torch.full_like(target_labels, self.bg_idx))
        target_bboxes = gt_bboxes.gather(1, target_gt_idx[..., None].expand(bs, n_anchors, 4))
        target_bboxes = target_bboxes * fg_mask[..., None]
        target_scores = F.one_hot(target_labels, nc + 1)[..., :nc].float()

        # Normalise the metric per gt: its best anchor gets the gt's best overlap.
        align_metric = align_metric * mask_pos
        pos_align = align_metric.amax(-1, keepdim=True)  # (B, M, 1)
        pos_overlaps = (overlaps * mask_pos).amax(-1, keepdim=True)  # (B, M, 1)
        norm_align = (align_metric * pos_overlaps / (pos_align + self.eps)).amax(1)  # (B, A)
        target_scores = target_scores * norm_align[..., None]
        return target_labels, target_bboxes, target_scores, fg_mask

    def _background(
        self, bs: int, n_anchors: int, nc: int, device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (
            torch.full((bs, n_anchors), self.bg_idx, dtype=torch.long, device=device),
            torch.zeros(bs, n_anchors, 4, device=device),
            torch.zeros(bs, n_anchors, nc, device=device),
            torch.zeros(bs, n_anchors, dtype=torch.bool, device=device),
        )
