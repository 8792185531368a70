"""Metrics agree with pycocotools on hand-built cases; upstream-style P/R/AP behave as upstream's."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from yolov9_qat.errors import DataError
from yolov9_qat.eval.metrics import (
    MetricAccumulator,
    ap_per_class,
    coco_map,
    compute_ap,
    match_predictions,
    plot_pr_curve,
    smooth,
)

pytestmark = pytest.mark.cpu

# two images, 640x480; image 1: a class-0 and a class-1 box, image 2: two class-0 boxes
LABELS = {
    1: np.array([[0, 100, 100, 200, 200], [1, 300, 50, 380, 170]], dtype=float),
    2: np.array([[0, 20, 30, 120, 90], [0, 400, 300, 520, 460]], dtype=float),
}


def gt_dict(labels: dict[int, np.ndarray] = LABELS) -> dict:
    """A COCO ground truth built by hand (category ids 1, 2 for classes 0, 1)."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in labels]
    anns = []
    for image_id, lab in labels.items():
        for c, x1, y1, x2, y2 in lab:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}


def direct_cocoeval(gt: dict, dets: list[dict]) -> np.ndarray:
    """pycocotools used directly, the way its own demo does (silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def accumulate(
    detections: dict[int, np.ndarray], labels: dict[int, np.ndarray] = LABELS
) -> MetricAccumulator:
    acc = MetricAccumulator(class_map=[1, 2])
    for image_id, lab in labels.items():
        det = detections.get(image_id, np.zeros((0, 6)))
        acc.update(image_id, det[np.argsort(-det[:, 4], kind="stable")], lab, (480, 640))
    return acc


def perfect(score: float = 0.9) -> dict[int, np.ndarray]:
    return {i: np.c_[lab[:, 1:5], np.full(len(lab), score), lab[:, 0]] for i, lab in LABELS.items()}


def test_perfect_detections() -> None:
    acc = accumulate(perfect())
    r = acc.compute(gt_dict())
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    assert r["n_images"] == 2 and r["n_instances"] == 4
    assert set(r) == {"AP", "AP50", "precision", "recall", "per_class", "n_images", "n_instances"}
    expected = {"images": 2, "instances": 3, "P": 1.0, "R": 1.0, "AP50": 1.0, "AP": 1.0}
    assert r["per_class"][0] == pytest.approx(expected)
    assert r["per_class"][1]["instances"] == 1 and r["per_class"][1]["images"] == 1
    json.dumps(r)  # plain Python numbers: val writes it as JSON


def test_no_detections() -> None:
    acc = accumulate({})
    r = acc.compute(gt_dict())
    assert r["AP"] == 0.0 and r["AP50"] == 0.0
    assert r["precision"] == 0.0 and r["recall"] == 0.0
    assert coco_map(gt_dict(), [])["AP"] == 0.0


def test_shifted_boxes_match_below_iou_0_65() -> None:
    # every box shifted right by 24% of its width: IoU = 0.76 / 1.24 = 0.613, so matched at 0.50,
    # 0.55, 0.60 and missed at 0.65..0.95: COCO AP = 3/10, AP50 = 1
    dets = {}
    for i, lab in LABELS.items():
        shifted = lab[:, 1:5].copy()
        dx = 0.24 * (shifted[:, 2] - shifted[:, 0])
        shifted[:, [0, 2]] += dx[:, None]
        dets[i] = np.c_[shifted, np.linspace(0.9, 0.6, len(lab)), lab[:, 0]]
    correct = match_predictions(dets[1], LABELS[1])
    assert correct.tolist() == [[True] * 3 + [False] * 7] * 2
    acc = accumulate(dets)
    r = acc.compute(gt_dict())
    stats = direct_cocoeval(gt_dict(), acc.coco_detections)
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP"] == pytest.approx(0.3)
    assert r["AP"] == pytest.approx(stats[0]) and r["AP50"] == pytest.approx(stats[1])


def test_false_positive_with_lower_score() -> None:
    dets = perfect()
    dets[2] = np.vstack([dets[2], [250, 250, 300, 300, 0.3, 0]])  # matches nothing, scored last
    acc = accumulate(dets)
    r = acc.compute(gt_dict())
    assert r["AP"] == pytest.approx(1.0)  # ranked after every true positive: AP unharmed
    # upstream's P is read off a curve interpolated linearly between confidences and smoothed, so
    # the false positive at 0.3 pulls the precision of class 0 at the chosen confidence a little
    assert r["precision"] == pytest.approx(1.0, abs=0.02) and r["recall"] == pytest.approx(1.0)
    # ranked first instead, it costs precision at every recall of class 0
    dets[2][-1, 4] = 0.95
    acc = accumulate(dets)
    r = acc.compute(gt_dict())
    stats = direct_cocoeval(gt_dict(), acc.coco_detections)
    assert r["AP"] < 1.0 and r["AP"] == pytest.approx(stats[0])


def test_missing_detections_recall_half() -> None:
    labels = {
        1: np.array(
            [[0, 10, 10, 60, 60], [0, 100, 10, 160, 60], [0, 10, 100, 60, 160], [0, 200, 200, 300, 300]]
        )
    }
    dets = {1: np.c_[labels[1][:2, 1:5], [0.9, 0.8], [0, 0]]}
    acc = accumulate(dets, labels)
    gt = gt_dict(labels)
    r = acc.compute(gt)
    assert r["recall"] == pytest.approx(0.5) and r["precision"] == pytest.approx(1.0)
    # COCO: precision 1 at the recall points 0.00..0.50 (51 of 101), 0 beyond
    assert r["AP"] == pytest.approx(51 / 101) and r["AP50"] == pytest.approx(51 / 101)
    assert r["AP"] == pytest.approx(direct_cocoeval(gt, acc.coco_detections)[0])
    # upstream's interpolation instead runs a line from (0.5, 1) to its sentinel (1, 0): AP 0.75
    assert acc.pr_result["ap50"] == pytest.approx(0.75, abs=0.01)


def test_ground_truth_built_from_labels_matches_given() -> None:
    dets = perfect()
    dets[1][0, :4] += [5, 0, 5, 0]
    acc = accumulate(dets)
    assert acc.compute() == acc.compute(gt_dict())


def test_accepts_torch_and_numpy() -> None:
    a, b = MetricAccumulator(class_map=[1, 2]), MetricAccumulator(class_map=[1, 2])
    for image_id, lab in LABELS.items():
        det = perfect(0.7)[image_id]
        a.update(image_id, det, lab)
        b.update(torch.tensor(image_id), torch.from_numpy(det).float(), torch.from_numpy(lab).float())
    assert a.compute(gt_dict()) == b.compute(gt_dict())
    with pytest.raises(ValueError, match="already added"):
        a.update(1, None, None)


def test_coco_map_does_not_modify_inputs_and_checks_ids() -> None:
    gt, dets = gt_dict(), accumulate(perfect()).coco_detections
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    r = coco_map(gt, dets, per_class=True)
    assert gt == gt_before and dets == dets_before
    assert r["per_class"] == pytest.approx({1: 1.0, 2: 1.0}) and len(r["stats"]) == 12
    assert all(type(k) is int for k in r["per_class"])
    assert "Average Precision" in r["summary"]
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_map(gt, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_map(gt, dets, img_ids=[1, 99])
    with pytest.raises(DataError, match="lacks categories"):
        coco_map({"images": [], "annotations": []}, [])


def test_coco_map_restricted_to_img_ids_and_fills_missing_fields() -> None:
    dets = [d for d in accumulate(perfect()).coco_detections if d["image_id"] == 1]
    assert coco_map(gt_dict(), dets)["AP"] < 1.0
    assert coco_map(gt_dict(), dets, img_ids=[1])["AP"] == pytest.approx(1.0)
    bare = gt_dict()
    for ann in bare["annotations"]:
        del ann["id"], ann["area"], ann["iscrowd"]
    assert coco_map(bare, dets, img_ids=[1])["AP"] == pytest.approx(1.0)


def test_coco_map_verbose_prints(capsys: pytest.CaptureFixture[str]) -> None:
    coco_map(gt_dict(), accumulate(perfect()).coco_detections)
    assert capsys.readouterr().out == ""
    coco_map(gt_dict(), accumulate(perfect()).coco_detections, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_match_predictions_one_to_one_by_confidence() -> None:
    labels = torch.tensor([[0, 0, 0, 100, 100]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [0, 0, 100, 100, 0.9, 1],  # perfect box, wrong class
            [2, 2, 100, 100, 0.8, 0],  # IoU 0.96
            [0, 0, 100, 98, 0.7, 0],  # IoU 0.98, but less confident: the label is taken
        ]
    )
    correct = match_predictions(dets, labels)
    assert correct.dtype == torch.bool and correct.shape == (3, 10)
    assert not correct[0].any() and correct[1].all() and not correct[2].any()
    assert match_predictions(dets, torch.zeros((0, 5))).shape == (3, 10)
    assert match_predictions(np.zeros((0, 6)), labels).shape == (0, 10)


def test_smooth_and_compute_ap() -> None:
    y = np.r_[np.zeros(500), np.ones(500)]
    s = smooth(y, 0.1)
    assert s.shape == y.shape and s[0] == 0 and s[-1] == 1 and s[500] == pytest.approx(51 / 101)
    # upstream's well-known ceiling: the sentinel (recall 1, precision 0) halves the last trapezoid
    ap, _, _ = compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert ap == pytest.approx(0.995)


def test_ap_per_class_picks_best_mean_f1() -> None:
    # class 0: 4 labels, predictions TP, TP, FP, TP, FP by falling confidence
    tp = np.array([1, 1, 0, 1, 0], bool)[:, None].repeat(10, 1)
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    r = ap_per_class(tp, conf, np.zeros(5), np.zeros(4))
    assert r["classes"].tolist() == [0]
    # F1 peaks at the third TP (conf 0.6: P = R = 0.75); smoothing moves the choice a little lower
    assert 0.5 < r["conf"] < 0.65
    assert r["precision"] == pytest.approx(0.75, abs=0.03) and r["recall"] == pytest.approx(0.75)
    assert r["p_curve"].shape == r["r_curve"].shape == r["f1_curve"].shape == r["pr_curve"].shape == (1, 1000)
    empty = ap_per_class(np.zeros((0, 10)), [], [], [])
    assert empty["precision"] == empty["recall"] == empty["ap"] == 0.0


def random_case(seed: int, n_images: int = 30, nc: int = 3) -> MetricAccumulator:
    """Jittered copies of 95% of the labels plus a low-score tail of false positives per image,
    the shape of a detector's output at conf_thres 0.001."""
    rng = np.random.default_rng(seed)
    acc = MetricAccumulator(nc=nc)
    for image_id in range(n_images):
        m = int(rng.integers(1, 8))
        xy, wh = rng.uniform(0, 500, (m, 2)), rng.uniform(20, 120, (m, 2))
        lab = np.c_[rng.integers(0, nc, m), xy, xy + wh]
        dets = [
            [*(lab[k, 1:] + rng.normal(0, 0.08, 4) * np.r_[wh[k], wh[k]]), rng.uniform(0.3, 1.0), lab[k, 0]]
            for k in range(m)
            if rng.random() < 0.95
        ]
        for _ in range(15 + int(rng.integers(0, 4))):
            p, s = rng.uniform(0, 500, 2), rng.uniform(20, 120, 2)
            dets.append([*p, *(p + s), rng.uniform(0.0, 0.8) ** 3, rng.integers(0, nc)])
        det = np.array(dets).reshape(-1, 6)
        acc.update(image_id, det[np.argsort(-det[:, 4])], lab, (640, 640))
    return acc


def test_ap_per_class_close_to_pycocotools() -> None:
    """Upstream's AP50 and COCO's differ by construction, so they agree only within a tolerance.

    Upstream integrates (trapezoid) the precision envelope interpolated at 101 recall points with
    a sentinel at (recall 1, precision 0), which adds about half the final precision times the
    recall never reached; COCO takes the envelope's value at each recall point and 0 beyond the
    last reached recall. The matching also differs slightly (COCO by score, per image; upstream
    by IoU then confidence). For detector-like output (high recall, a long low-score tail of
    false positives) the gap stays within 0.02.
    """
    acc = random_case(0)
    r = acc.compute()
    coco_direct = direct_cocoeval(acc.ground_truth(), acc.coco_detections)
    assert r["AP50"] == pytest.approx(coco_direct[1]) and r["AP"] == pytest.approx(coco_direct[0])
    assert 0.5 < r["AP50"] < 0.95  # a case that is neither trivial nor hopeless
    assert abs(acc.pr_result["ap50"] - r["AP50"]) < 0.02
    for cls, row in r["per_class"].items():
        k = acc.pr_result["classes"].tolist().index(cls)
        assert abs(acc.pr_result["ap50_class"][k] - row["AP50"]) < 0.03
        assert not math.isnan(row["AP"])


def test_plot_pr_curve(tmp_path) -> None:
    acc = random_case(1, n_images=5)
    acc.compute()
    out = plot_pr_curve(acc.pr_result, {0: "person", 1: "car", 2: "dog"}, tmp_path / "plots" / "PR_curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["PR_curve.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="ap_per_class"):
        plot_pr_curve(acc.compute(), None, tmp_path / "x.png")


def test_coco_map_is_pycocotools_on_upstreams_predictions(shared_dir) -> None:
    """``coco_map`` runs faster-coco-eval's ``COCOeval``: on upstream's own ``val_dual.py --save-json``
    output (23k detections on 300 images) it gives pycocotools' 12 stats and per-class precision, on
    all images and on a subset."""
    fixture = shared_dir / "fixtures" / "upstream-val"
    gt = json.loads((fixture / "data" / "annotations" / "instances_val.json").read_text())
    dets = json.loads((fixture / "upstream-run" / "val_dual_predictions.json").read_text())
    ids = {im["file_name"].rsplit(".", 1)[0]: im["id"] for im in gt["images"]}
    dets = [{**d, "image_id": ids.get(d["image_id"], d["image_id"])} for d in dets]
    np.testing.assert_array_equal(coco_map(gt, dets)["stats"], direct_cocoeval(gt, dets))
    subset = sorted(ids.values())[::3]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        e = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        e.params.imgIds = subset
        e.evaluate()
        e.accumulate()
        e.summarize()
    got = coco_map(gt, dets, img_ids=subset, per_class=True)
    np.testing.assert_array_equal(got["stats"], e.stats)
    precision = e.eval["precision"][:, :, :, 0, -1]  # area "all", 100 detections
    for k, cat in enumerate(e.params.catIds):
        p = precision[:, :, k]
        assert got["per_class"][cat] == pytest.approx(float(p[p > -1].mean()), abs=1e-12)
