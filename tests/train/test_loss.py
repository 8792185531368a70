"""Task-aligned assigner and the YOLOv9 detection loss (single and dual head)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from yolov9_qat.train.assigner import TaskAlignedAssigner
from yolov9_qat.train.loss import (
    DUAL_WEIGHTS,
    DetectionLoss,
    DualDetectionLoss,
    build_loss,
    build_targets,
    distribution_focal_loss,
    is_dual_output,
)

NC = 3
REG_MAX = 16
NO = NC + 4 * REG_MAX
STRIDES = [8.0, 16.0, 32.0]
IMG = 64


# ------------------------------------------------------------------------------------------- helpers


def grid_anchors(n: int = 8, stride: float = 8.0) -> torch.Tensor:
    """(n*n, 2) anchor centres in pixels, row-major (index = row * n + col)."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * stride
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((gx, gy), -1).view(-1, 2)


def centred_boxes(points: torch.Tensor, size: float) -> torch.Tensor:
    return torch.cat((points - size / 2, points + size / 2), -1)


def random_feats(batch: int = 2, scale: float = 1.0, requires_grad: bool = False) -> list[torch.Tensor]:
    return [
        (torch.randn(batch, NO, IMG // int(s), IMG // int(s)) * scale).requires_grad_(requires_grad)
        for s in STRIDES
    ]


def sample_targets() -> torch.Tensor:
    return torch.tensor(
        [
            [0, 0, 0.50, 0.50, 0.40, 0.30],
            [0, 2, 0.25, 0.30, 0.20, 0.25],
            [1, 1, 0.60, 0.55, 0.50, 0.60],
            [1, 2, 0.20, 0.80, 0.15, 0.20],
            [1, 0, 0.80, 0.20, 0.30, 0.25],
        ]
    )


def assign(assigner, scores, pboxes, anchors, labels, gboxes, mask=None):
    gboxes = gboxes.view(1, -1, 4).float()
    labels = torch.as_tensor(labels, dtype=torch.float32).view(1, -1, 1)
    if mask is None:
        mask = torch.ones(1, gboxes.shape[1], 1, dtype=torch.bool)
    return assigner(scores.unsqueeze(0), pboxes.unsqueeze(0), anchors, labels, gboxes, mask)


# ------------------------------------------------------------------------------------------ assigner


@pytest.mark.cpu
def test_assigner_inside_anchor_gets_gt_outside_is_background() -> None:
    anchors = grid_anchors()
    scores = torch.full((64, NC), 0.5)
    pboxes = centred_boxes(anchors, 16.0)
    gt = torch.tensor([[0.0, 0.0, 24.0, 24.0]])
    labels, bboxes, tscores, fg = assign(TaskAlignedAssigner(10, NC), scores, pboxes, anchors, [2], gt)

    inside = (anchors[:, 0] < 24) & (anchors[:, 1] < 24)  # the 3x3 anchors with centres 4, 12, 20
    assert inside.sum() == 9
    assert torch.equal(fg[0], inside)
    assert (labels[0, inside] == 2).all()
    assert torch.allclose(bboxes[0, inside], gt.expand(9, 4))
    assert (tscores[0, inside, 2] > 0).all()
    assert (tscores[0, inside][:, [0, 1]] == 0).all()
    # background: label nc, zero box and scores
    assert (labels[0, ~inside] == NC).all()
    assert (bboxes[0, ~inside] == 0).all()
    assert (tscores[0, ~inside] == 0).all()


@pytest.mark.cpu
def test_assigner_topk_limit_keeps_best_metric() -> None:
    anchors = grid_anchors()
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    pboxes = gt.expand(64, 4).clone()  # every anchor predicts the gt exactly: IoU 1
    scores = torch.full((64, NC), 0.1)
    best = torch.tensor([5, 17, 40])
    scores[best, 1] = torch.tensor([0.9, 0.6, 0.3])
    labels, _, tscores, fg = assign(TaskAlignedAssigner(3, NC), scores, pboxes, anchors, [1], gt)

    assert fg.sum() == 3
    assert fg[0, best].all()
    assert (labels[0, best] == 1).all()
    # normalised target scores: best anchor gets the gt's best IoU (1), the others their metric ratio
    expected = torch.tensor([0.9, 0.6, 0.3]).sqrt() / math.sqrt(0.9)
    assert torch.allclose(tscores[0, best, 1], expected, atol=1e-5)
    assert tscores.max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.cpu
@pytest.mark.parametrize("winner", [0, 1])
def test_assigner_overlap_resolved_by_iou(winner: int) -> None:
    anchors = grid_anchors()
    gts = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 40.0, 40.0]])
    shared = 2 * 8 + 2  # anchor centre (20, 20), inside both gts
    pboxes = centred_boxes(anchors, 16.0)
    pboxes[shared] = gts[winner]
    scores = torch.full((64, NC), 0.5)
    labels, bboxes, tscores, fg = assign(TaskAlignedAssigner(64, NC), scores, pboxes, anchors, [0, 1], gts)

    assert fg[0, shared]
    assert labels[0, shared] == winner
    assert torch.equal(bboxes[0, shared], gts[winner])
    assert tscores[0, shared, winner] > 0 and tscores[0, shared, 1 - winner] == 0
    # every anchor inside either gt is positive, with exactly one gt
    inside = ((anchors[:, None] > gts[None, :, :2]) & (anchors[:, None] < gts[None, :, 2:])).all(-1)
    inside_any = inside.any(-1)
    assert torch.equal(fg[0], inside_any)
    assert ((tscores[0] > 0).sum(-1) <= 1).all()


@pytest.mark.cpu
def test_assigner_ignores_padding_and_handles_no_gt() -> None:
    anchors = grid_anchors()
    scores = torch.full((64, NC), 0.5)
    pboxes = centred_boxes(anchors, 16.0)
    gts = torch.tensor([[0.0, 0.0, 24.0, 24.0], [0.0, 0.0, 64.0, 64.0]])
    mask = torch.tensor([True, False]).view(1, 2, 1)
    _, _, _, fg = assign(TaskAlignedAssigner(10, NC), scores, pboxes, anchors, [0, 1], gts, mask)
    assert fg.sum() == 9  # only the real gt's anchors

    empty = torch.zeros(1, 0, 4)
    labels, bboxes, tscores, fg = TaskAlignedAssigner(10, NC)(
        scores[None], pboxes[None], anchors, torch.zeros(1, 0, 1), empty, torch.zeros(1, 0, 1)
    )
    assert not fg.any() and (labels == NC).all() and not bboxes.any() and not tscores.any()


# ----------------------------------------------------------------------------------------------- DFL


@pytest.mark.cpu
def test_dfl_minimum_at_matching_distribution() -> None:
    target = torch.tensor([[5.0, 0.0, 14.99, 7.3]])
    # near one-hot at the integer targets, and (0.7, 0.3) on bins 7, 8 for 7.3
    probs = torch.full((1, 4, REG_MAX), 1e-6)
    probs[0, 0, 5] = probs[0, 1, 0] = 1.0
    probs[0, 2, 14], probs[0, 2, 15] = 0.01, 0.99
    probs[0, 3, 7], probs[0, 3, 8] = 0.7, 0.3
    probs = probs / probs.sum(-1, keepdim=True)
    best = distribution_focal_loss(probs.log(), target)
    per_side_min = torch.tensor([0.0, 0.0, -(0.01 * math.log(0.01) + 0.99 * math.log(0.99)), 0.0])
    per_side_min[3] = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))  # entropy: the DFL's lower bound
    assert best.shape == (1, 1)
    assert best.item() == pytest.approx(per_side_min.mean().item(), abs=1e-3)
    # any other distribution is worse
    torch.manual_seed(0)
    for _ in range(5):
        assert distribution_focal_loss(torch.randn(1, 4, REG_MAX) * 3, target).item() > best.item()
    assert distribution_focal_loss(torch.zeros(1, 4, REG_MAX), target).item() > best.item()


# ---------------------------------------------------------------------------------------------- loss


@pytest.mark.cpu
def test_build_targets_pads_per_image() -> None:
    t = torch.tensor([[1, 2, 0.5, 0.5, 0.5, 0.5], [0, 1, 0.25, 0.25, 0.5, 0.5], [1, 0, 0.5, 0.5, 1.0, 1.0]])
    labels, boxes, mask = build_targets(t, batch_size=3, img_h=64, img_w=128)
    assert labels.shape == (3, 2, 1) and boxes.shape == (3, 2, 4)
    assert mask[:, :, 0].tolist() == [[True, False], [True, True], [False, False]]
    assert labels[1, :, 0].tolist() == [2, 0]
    assert torch.allclose(boxes[0, 0], torch.tensor([0.0, 0.0, 64.0, 32.0]))
    assert torch.allclose(boxes[1, 0], torch.tensor([32.0, 16.0, 96.0, 48.0]))
    with pytest.raises(ValueError):
        build_targets(t, batch_size=1, img_h=64, img_w=64)


@pytest.mark.cpu
def test_loss_finite_positive_and_gradient_flows() -> None:
    torch.manual_seed(0)
    feats = random_feats(requires_grad=True)
    loss, items = DetectionLoss(NC, STRIDES)(feats, sample_targets())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert torch.isfinite(loss) and loss.item() > 0
    assert items.shape == (3,) and not items.requires_grad
    assert (items > 0).all()
    assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)  # sum * batch size
    loss.backward()
    for f in feats:
        assert f.grad is not None and torch.isfinite(f.grad).all()
        assert f.grad[:, : 4 * REG_MAX].abs().sum() > 0  # box distribution channels
        assert f.grad[:, 4 * REG_MAX :].abs().sum() > 0  # class channels


@pytest.mark.cpu
def test_no_targets_only_class_loss() -> None:
    torch.manual_seed(0)
    feats = random_feats(requires_grad=True)
    loss, items = DetectionLoss(NC, STRIDES)(feats, torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0
    assert items[1] > 0
    loss.backward()
    with pytest.raises(ValueError):
        DetectionLoss(NC, STRIDES)(feats, torch.tensor([[0, NC, 0.5, 0.5, 0.1, 0.1]]))
    assert all(f.grad is not None for f in feats)


@pytest.mark.cpu
def test_hyp_gains_are_applied() -> None:
    torch.manual_seed(0)
    feats = random_feats()
    _, base = DetectionLoss(NC, STRIDES)(feats, sample_targets())
    _, scaled = DetectionLoss(NC, STRIDES, hyp={"box": 15.0, "cls": 0.25, "dfl": 3.0})(
        feats, sample_targets()
    )
    assert torch.allclose(scaled, base * torch.tensor([2.0, 0.5, 2.0]), rtol=1e-5)


@pytest.mark.cpu
def test_loss_decreases_when_optimising_outputs() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(f) for f in random_feats(scale=0.1)]
    criterion = DetectionLoss(NC, STRIDES)
    targets = sample_targets()
    opt = torch.optim.Adam(params, lr=0.05)
    initial, initial_items = criterion(params, targets)
    for _ in range(50):
        opt.zero_grad()
        loss, _ = criterion(params, targets)
        loss.backward()
        opt.step()
    final, final_items = criterion(params, targets)
    assert final.item() < 0.5 * initial.item()
    assert (final_items < initial_items).all()  # box, cls and dfl all improve


@pytest.mark.cpu
def test_dual_loss_is_weighted_sum_of_branches() -> None:
    assert DUAL_WEIGHTS == (0.25, 1.0)
    torch.manual_seed(0)
    feats = random_feats()
    single_loss, single = DetectionLoss(NC, STRIDES)(feats, sample_targets())
    dual_loss, dual = DualDetectionLoss(NC, STRIDES)([feats, feats], sample_targets())
    assert torch.allclose(dual, single * sum(DUAL_WEIGHTS), rtol=1e-5)
    assert dual_loss.item() == pytest.approx(single_loss.item() * 1.25, rel=1e-5)

    aux = random_feats()
    _, aux_items = DetectionLoss(NC, STRIDES)(aux, sample_targets())
    _, mixed = DualDetectionLoss(NC, STRIDES)([aux, feats], sample_targets())
    assert torch.allclose(mixed, 0.25 * aux_items + single, rtol=1e-5)

    with pytest.raises(ValueError):
        DetectionLoss(NC, STRIDES)([feats, feats], sample_targets())
    with pytest.raises(ValueError):
        DualDetectionLoss(NC, STRIDES)(feats, sample_targets())


@pytest.mark.cpu
def test_eval_tuple_and_autocast_compute_in_float32() -> None:
    torch.manual_seed(0)
    feats = random_feats()
    criterion = DetectionLoss(NC, STRIDES)
    _, ref_items = criterion(feats, sample_targets())
    _, tuple_items = criterion((torch.zeros(2, 4 + NC, 84), feats), sample_targets())
    assert torch.equal(tuple_items, ref_items)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, items = criterion([f.bfloat16() for f in feats], sample_targets())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.allclose(items, ref_items, rtol=0.05)


class _Head(nn.Module):
    def __init__(self, dual: bool) -> None:
        super().__init__()
        self.nc, self.reg_max, self.dual = NC, REG_MAX, dual
        self.conv = nn.Conv2d(1, 1, 1)


class _Model(nn.Module):
    def __init__(self, dual: bool = False) -> None:
        super().__init__()
        self.head = _Head(dual)
        self.register_buffer("stride", torch.tensor(STRIDES))


@pytest.mark.cpu
def test_build_loss_and_from_model() -> None:
    single = build_loss(_Model(), {"box": 1.0})
    assert type(single) is DetectionLoss
    assert single.nc == NC and single.reg_max == REG_MAX and single.gains == (1.0, 0.5, 1.5)
    assert torch.equal(single.stride, torch.tensor(STRIDES))
    assert type(build_loss(_Model(dual=True))) is DualDetectionLoss

    feats = random_feats()
    assert is_dual_output([feats, feats]) and not is_dual_output(feats)
    assert is_dual_output((torch.zeros(1), [feats, feats]))
    assert type(build_loss(_Model(), outputs=[feats, feats])) is DualDetectionLoss
    assert type(DualDetectionLoss.from_model(_Model())) is DualDetectionLoss
