"""NMS for the anchor-free head, against hand-built cases and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from yolov9_qat.eval.nms import PER_CLASS_FROM, clip_boxes, non_max_suppression, scale_boxes
from yolov9_qat.utils.boxes import xywh2xyxy

pytestmark = pytest.mark.cpu


def make_pred(boxes_xywh: list[list[float]], scores: list[list[float]]) -> torch.Tensor:
    """One image's head output (1, 4 + nc, A) from A boxes (cx, cy, w, h) and A score rows."""
    boxes = torch.tensor(boxes_xywh, dtype=torch.float32).reshape(-1, 4)
    cls = torch.tensor(scores, dtype=torch.float32).reshape(len(boxes), -1)
    return torch.cat((boxes, cls), 1).T[None]


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    pred: np.ndarray, conf_thres: float, iou_thres: float, max_det: int, agnostic: bool
) -> np.ndarray:
    """Brute force: every (anchor, class) pair above the threshold, greedy by score, O(n^2)."""
    nc = pred.shape[0] - 4
    candidates = []
    for a in range(pred.shape[1]):
        cx, cy, w, h = pred[:4, a]
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        for c in range(nc):
            if pred[4 + c, a] > conf_thres:
                candidates.append((float(pred[4 + c, a]), c, box))
    candidates.sort(key=lambda t: -t[0])
    kept: list[tuple[float, int, np.ndarray]] = []
    for score, c, box in candidates:
        if all((not agnostic and kc != c) or iou_xyxy(box, kb) <= iou_thres for _, kc, kb in kept):
            kept.append((score, c, box))
    rows = [[*box, score, c] for score, c, box in kept[:max_det]]
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def test_overlapping_same_class_suppressed() -> None:
    pred = make_pred([[50, 50, 20, 20], [52, 50, 20, 20], [150, 150, 20, 20]], [[0.9], [0.8], [0.7]])
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5)
    assert out.shape == (3 - 1, 6)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(out[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert out[:, 5].tolist() == [0.0, 0.0]


def test_different_classes_kept_unless_agnostic() -> None:
    pred = make_pred([[50, 50, 20, 20], [51, 50, 20, 20]], [[0.9, 0.0], [0.0, 0.8]])
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5)
    assert out[:, 5].tolist() == [0.0, 1.0]
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5, agnostic=True)
    assert out[:, 5].tolist() == [0.0]


def test_multi_label_one_anchor_two_classes() -> None:
    pred = make_pred([[50, 50, 20, 20]], [[0.9, 0.6, 0.1]])
    (out,) = non_max_suppression(pred, conf_thres=0.25)
    assert out[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(out[:, 4], torch.tensor([0.9, 0.6]))
    (out,) = non_max_suppression(pred, conf_thres=0.25, multi_label=False)
    assert out[:, 5].tolist() == [0.0]


def test_conf_threshold_is_strict() -> None:
    pred = make_pred([[10, 10, 5, 5], [50, 50, 5, 5], [90, 90, 5, 5]], [[0.5], [0.25], [0.2]])
    (out,) = non_max_suppression(pred, conf_thres=0.25)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.5]))


def test_classes_filter() -> None:
    pred = make_pred(
        [[10, 10, 5, 5], [50, 50, 5, 5], [90, 90, 5, 5]], [[0.9, 0, 0], [0, 0.8, 0], [0, 0, 0.7]]
    )
    (out,) = non_max_suppression(pred, classes=[0, 2])
    assert out[:, 5].tolist() == [0.0, 2.0]


def test_max_det_and_max_nms() -> None:
    boxes = [[20.0 * i + 10, 10, 5, 5] for i in range(10)]
    scores = [[0.9 - 0.05 * i] for i in range(10)]
    pred = make_pred(boxes, scores)
    (out,) = non_max_suppression(pred, max_det=4)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out[:, 4], torch.tensor(scores[:4]).view(-1))
    (out,) = non_max_suppression(pred, max_nms=3)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out[:, 4], torch.tensor(scores[:3]).view(-1))


def test_empty_inputs() -> None:
    for pred in (torch.zeros(2, 84, 0), torch.zeros(2, 84, 100), torch.zeros(1, 5, 10)):
        out = non_max_suppression(pred)
        assert len(out) == pred.shape[0]
        assert all(o.shape == (0, 6) and o.dtype == torch.float32 for o in out)


def test_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match="batch, 4 \\+ classes"):
        non_max_suppression(torch.zeros(84, 100))


def test_batch_with_different_counts() -> None:
    a = make_pred([[10, 10, 5, 5], [50, 50, 5, 5], [90, 90, 5, 5]], [[0.9, 0.0], [0.0, 0.8], [0.7, 0.0]])
    b = make_pred([[10, 10, 5, 5], [50, 50, 5, 5], [90, 90, 5, 5]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    c = make_pred([[10, 10, 5, 5], [10.5, 10, 5, 5], [90, 90, 5, 5]], [[0.9, 0.0], [0.8, 0.0], [0.0, 0.0]])
    out = non_max_suppression(torch.cat((a, b, c)), conf_thres=0.25)
    assert [len(o) for o in out] == [3, 0, 1]
    for o in out:
        assert (o[:-1, 4] >= o[1:, 4]).all()


def test_half_precision_input() -> None:
    pred = make_pred([[50, 50, 20, 20], [52, 50, 20, 20]], [[0.9], [0.8]]).half()
    (out,) = non_max_suppression(pred, conf_thres=0.25)
    assert out.dtype == torch.float32 and out.shape == (1, 6)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed: int, agnostic: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    bs, nc, anchors = 2, 3, 120
    xy = torch.rand(bs, 2, anchors, generator=gen) * 200
    wh = torch.rand(bs, 2, anchors, generator=gen) * 60 + 4
    scores = torch.rand(bs, nc, anchors, generator=gen) ** 3
    pred = torch.cat((xy, wh, scores), 1)
    out = non_max_suppression(pred, conf_thres=0.05, iou_thres=0.45, max_det=40, agnostic=agnostic)
    for xi in range(bs):
        ref = reference_nms(pred[xi].double().numpy(), 0.05, 0.45, 40, agnostic)
        assert len(ref) > 10
        assert out[xi].shape == ref.shape
        np.testing.assert_allclose(out[xi].numpy(), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("max_det", [300, 5000])
def test_class_by_class_keeps_what_one_offset_call_keeps(max_det: int) -> None:
    """Above ``PER_CLASS_FROM`` candidates NMS runs class by class: exactly the boxes, in the order, that
    one ``torchvision.ops.nms`` call over the class-offset boxes keeps (upstream's form)."""
    gen = torch.Generator().manual_seed(3)
    nc, anchors = 10, 525  # 160 px: 20x20 + 10x10 + 5x5 anchors, every (anchor, class) pair a candidate
    xy = torch.rand(2, 2, anchors, generator=gen) * 160
    wh = torch.rand(2, 2, anchors, generator=gen) * 60 + 4
    scores = (torch.rand(2, nc, anchors, generator=gen) * 1000).round() / 1000 + 0.002  # ties included
    pred = torch.cat((xy, wh, scores), 1)
    out = non_max_suppression(pred, max_det=max_det)
    for xi in range(2):
        x = pred[xi].T
        i, j = (x[:, 4:] > 0.001).nonzero(as_tuple=True)
        assert len(i) > PER_CLASS_FROM
        cand = torch.cat((xywh2xyxy(x[i, :4]), x[i, 4 + j, None], j[:, None].float()), 1)
        cand = cand[torch.sort(cand[:, 4], descending=True, stable=True).indices]
        keep = torchvision.ops.nms(cand[:, :4] + cand[:, 5:6] * 7680, cand[:, 4], 0.7)[:max_det]
        assert torch.equal(out[xi], cand[keep])


def test_scale_boxes_undoes_letterbox() -> None:
    # a 480x640 (h, w) image letterboxed into 640x640: gain 1, 80 px of padding top and bottom
    boxes = torch.tensor([[10.0, 90.0, 110.0, 190.0, 0.9, 3.0], [-5.0, 70.0, 650.0, 700.0, 0.5, 1.0]])
    out = scale_boxes((640, 640), boxes, (480, 640))
    torch.testing.assert_close(out[0], torch.tensor([10.0, 10.0, 110.0, 110.0, 0.9, 3.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 640.0, 480.0, 0.5, 1.0]))
    assert boxes[0, 1] == 90.0  # input untouched
    # a 960x1280 image into 640x640: gain 0.5, same padding; explicit ratio_pad agrees
    arr = np.array([[10.0, 90.0, 110.0, 190.0]])
    expected = np.array([[20.0, 20.0, 220.0, 220.0]])
    np.testing.assert_allclose(scale_boxes((640, 640), arr, (960, 1280)), expected)
    np.testing.assert_allclose(scale_boxes((640, 640), arr, (960, 1280), ((0.5, 0.5), (0.0, 80.0))), expected)


def test_clip_boxes() -> None:
    boxes = np.array([[-3, -4, 700, 500]])
    np.testing.assert_allclose(clip_boxes(boxes, (480, 640)), [[0, 0, 640, 480]])
    t = clip_boxes(torch.tensor([[-3.0, 5.0, 30.0, 900.0]]), (480, 640))
    torch.testing.assert_close(t, torch.tensor([[0.0, 5.0, 30.0, 480.0]]))
